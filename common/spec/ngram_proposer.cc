// Prompt-lookup drafting (see ngram_proposer.h).
#include "common/spec/ngram_proposer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/spec/check.h"

namespace duet::spec {

absl::Status NgramConfig::Validate() const {
  if (min_n < 1 || min_n > max_n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ngram config needs 1 <= min_n <= max_n, got min_n ", min_n, ", max_n ", max_n));
  }
  return absl::OkStatus();
}

std::vector<int32_t> ProposeNgram(absl::Span<const int32_t> tokens, int64_t k,
                                  const NgramConfig& config) {
  if (absl::Status status = config.Validate(); !status.ok()) Die(status.ToString());
  const int64_t size = static_cast<int64_t>(tokens.size());
  if (k <= 0 || size < 2) return {};

  // An occurrence ending at `end` (exclusive, end < size) matches the last m tokens when
  // tokens[end - j] == tokens[size - j] for j = 1..m. Scanning end downwards and keeping only
  // strictly longer matches finds the longest n <= max_n that occurs, at its most recent
  // occurrence; a full max_n match cannot be beaten, so the scan stops there.
  const int64_t max_n = config.max_n;
  int64_t best_n = 0;
  int64_t best_end = 0;
  for (int64_t end = size - 1; end >= 1 && best_n < max_n; --end) {
    const int64_t limit = std::min(max_n, end);
    int64_t m = 0;
    while (m < limit && tokens[end - 1 - m] == tokens[size - 1 - m]) ++m;
    if (m > best_n) {
      best_n = m;
      best_end = end;
    }
  }
  if (best_n < config.min_n) return {};
  // What followed the occurrence, and past the end of the sequence the same period again: when
  // the continuation runs into the suffix, the text repeats with period size - best_end.
  const int64_t count = std::min(k, size);
  const int64_t period = size - best_end;
  std::vector<int32_t> draft;
  draft.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    draft.push_back(i < period ? tokens[best_end + i] : draft[i - period]);
  }
  return draft;
}

}  // namespace duet::spec
