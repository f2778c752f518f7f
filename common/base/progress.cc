#include "common/base/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace duet {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

ProgressBar::ProgressBar(std::string label, uint64_t total_bytes, bool force)
    : label_(std::move(label)),
      total_(total_bytes),
      enabled_(force || (total_bytes >= kMinBytes && ::isatty(STDERR_FILENO))) {}

ProgressBar::ProgressBar(std::string label, uint64_t total, Items items)
    : label_(std::move(label)),
      unit_(std::move(items.unit)),
      total_(total),
      enabled_(::isatty(STDERR_FILENO) != 0) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Add(uint64_t bytes) {
  done_ = std::min(total_, done_ + bytes);
  if (!enabled_) return;
  int64_t now = NowNs();
  if (now - last_draw_ns_ < 100'000'000 && done_ < total_) return;
  last_draw_ns_ = now;
  Draw(false);
}

void ProgressBar::Finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  done_ = total_;
  Draw(true);
}

void ProgressBar::Draw(bool final) {
  constexpr int kWidth = 30;
  double frac = total_ == 0 ? 1.0 : static_cast<double>(done_) / static_cast<double>(total_);
  int filled = static_cast<int>(frac * kWidth);
  std::string bar(kWidth, ' ');
  for (int i = 0; i < filled; ++i) bar[i] = '=';
  if (filled < kWidth) bar[filled] = '>';
  const int shift = unit_.empty() ? 20 : 0;
  std::fprintf(stderr, "\r%s [%s] %3d%% %llu/%llu %s%s", label_.c_str(), bar.c_str(),
               static_cast<int>(frac * 100), static_cast<unsigned long long>(done_ >> shift),
               static_cast<unsigned long long>(total_ >> shift),
               unit_.empty() ? "MB" : unit_.c_str(), final ? "\n" : "");
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace duet
