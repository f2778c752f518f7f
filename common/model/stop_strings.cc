#include "common/model/stop_strings.h"

#include <algorithm>
#include <utility>

namespace duet {
namespace {

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Length of the UTF-8 sequence a lead byte starts; 1 for ASCII and for bytes that cannot
// start a sequence (those are passed through as they are).
size_t SequenceLength(char c) {
  const unsigned char b = static_cast<unsigned char>(c);
  if (b >= 0xF0 && b <= 0xF7) return 4;
  if (b >= 0xE0) return b <= 0xEF ? 3 : 1;
  if (b >= 0xC0) return 2;
  return 1;
}

// The largest cut <= `cut` in `text` that does not split a code point and leaves no
// incomplete code point before it.
size_t SafeCut(std::string_view text, size_t cut) {
  // Step back over continuation bytes to the start of the code point `cut` falls in (at most
  // 3 bytes: a longer run is not UTF-8 and is left alone).
  size_t start = cut;
  while (start > 0 && cut - start < 3 && start < text.size() && IsContinuationByte(text[start])) {
    --start;
  }
  if (start < cut && !IsContinuationByte(text[start]) &&
      start + SequenceLength(text[start]) > cut) {
    cut = start;
  }
  // An incomplete sequence right before the cut (the stream ended mid code point).
  for (size_t back = 1; back <= 3 && back <= cut; ++back) {
    const char c = text[cut - back];
    if (IsContinuationByte(c)) continue;
    if (SequenceLength(c) > back) cut -= back;
    break;
  }
  return cut;
}

}  // namespace

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) {
  for (std::string& stop : stop_strings) {
    if (stop.empty()) continue;
    max_stop_length_ = std::max(max_stop_length_, stop.size());
    stop_strings_.push_back(std::move(stop));
  }
}

StopStringMatcher::Result StopStringMatcher::Push(std::string_view delta) {
  Result result;
  if (stopped_) {
    result.stopped = true;
    return result;
  }
  buffer_.append(delta);

  // The match ending first, then the longest. No match ended before this delta (we would have
  // stopped), and every unfinished one began inside the held-back tail, so each stop string's
  // first occurrence in buffer_ is its earliest-ending one in the whole stream.
  size_t best_start = std::string::npos;
  size_t best_end = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    const size_t pos = buffer_.find(stop);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stop.size();
    if (end < best_end || (end == best_end && pos < best_start)) {
      best_start = pos;
      best_end = end;
    }
  }
  if (best_start != std::string::npos) {
    result.emit = buffer_.substr(0, best_start);
    result.stopped = true;
    stopped_ = true;
    buffer_.clear();
    return result;
  }

  const size_t cut = SafeCut(buffer_, buffer_.size() - HoldBack());
  result.emit = buffer_.substr(0, cut);
  buffer_.erase(0, cut);
  return result;
}

size_t StopStringMatcher::HoldBack() const {
  const std::string_view text = buffer_;
  const size_t longest = std::min(text.size(), max_stop_length_ > 0 ? max_stop_length_ - 1 : 0);
  for (size_t length = longest; length > 0; --length) {
    const std::string_view tail = text.substr(text.size() - length);
    for (const std::string& stop : stop_strings_) {
      if (stop.size() > length && std::string_view(stop).substr(0, length) == tail) return length;
    }
  }
  return 0;
}

std::string StopStringMatcher::Flush() {
  std::string out = std::move(buffer_);
  buffer_.clear();
  return out;
}

}  // namespace duet
