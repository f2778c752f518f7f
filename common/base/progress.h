// A progress bar on stderr for long work (loading or writing large model files).
#ifndef DUET_COMMON_BASE_PROGRESS_H_
#define DUET_COMMON_BASE_PROGRESS_H_

#include <cstdint>
#include <string>

namespace duet {

// Draws "label [=====>    ] 42% 120/300 MB" on stderr, redrawn at most every 100 ms.
// It stays silent when total_bytes is under kMinBytes or stderr is not a terminal, unless
// `force` is set. Not thread-safe: drive it from one thread.
class ProgressBar {
 public:
  static constexpr uint64_t kMinBytes = 100ull << 20;

  ProgressBar(std::string label, uint64_t total_bytes, bool force = false);
  // Counts items instead of bytes: ProgressBar(label, 50, ProgressBar::Items{"requests"})
  // draws "label [===>  ] 42% 21/50 requests" whenever stderr is a terminal.
  struct Items {
    std::string unit;
  };
  ProgressBar(std::string label, uint64_t total, Items items);
  ~ProgressBar();  // Finishes the line if anything was drawn.

  void Add(uint64_t bytes);
  void Finish();

 private:
  void Draw(bool final);

  std::string label_;
  std::string unit_;  // "" = bytes, shown in MB
  uint64_t total_;
  uint64_t done_ = 0;
  bool enabled_;
  bool drawn_ = false;
  bool finished_ = false;
  int64_t last_draw_ns_ = 0;
};

}  // namespace duet

#endif  // DUET_COMMON_BASE_PROGRESS_H_
