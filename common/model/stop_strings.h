// Stop strings over streamed text (OpenAI `stop`): finds the first stop string in the text a
// detokenizer streams out, and holds back just enough of the tail that the emitted text never
// contains a stop string or any part of one.
#ifndef DUET_COMMON_MODEL_STOP_STRINGS_H_
#define DUET_COMMON_MODEL_STOP_STRINGS_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace duet {

// Matching is on bytes. The match that wins is the one that *ends* first in the stream (ties:
// the longest, i.e. the one starting earliest); this is the first moment a stop string has
// been produced, so the outcome never depends on how the text was split into deltas. E.g.
// with stops {"abcd", "bc"}, "abcd" stops at "bc" and emits "a".
//
// Held back: the longest tail of the text that is a proper prefix of some stop string (the
// shortest tail that still could become a match), widened so the emitted text never ends
// inside a UTF-8 code point. An incomplete code point at the end of a delta is also held until
// its remaining bytes arrive. The emitted text excludes the stop string (OpenAI/vLLM default).
//
// Not thread-safe; one matcher per sequence.
class StopStringMatcher {
 public:
  // Empty strings are ignored (SamplingParams::Validate rejects them). No stop strings: every
  // Push emits its delta, except an incomplete trailing UTF-8 code point.
  explicit StopStringMatcher(std::vector<std::string> stop_strings);

  struct Result {
    std::string emit;      // Text safe to send now.
    bool stopped = false;  // A stop string completed; `emit` ends right before it.
  };

  // Appends `delta` to the stream. Once a Result has had stopped = true, later calls return
  // {"", true} and ignore their delta.
  Result Push(std::string_view delta);

  // At the end of generation (no stop string found): the held-back text, which is then
  // cleared. Empty after a stop.
  std::string Flush();

  bool stopped() const { return stopped_; }

 private:
  // Bytes at the end of buffer_ that must not be emitted yet.
  size_t HoldBack() const;

  std::vector<std::string> stop_strings_;
  size_t max_stop_length_ = 0;
  std::string buffer_;  // Received but not yet emitted.
  bool stopped_ = false;
};

}  // namespace duet

#endif  // DUET_COMMON_MODEL_STOP_STRINGS_H_
