// Prompt-lookup (n-gram) drafting: proposes the tokens that followed the most recent earlier
// occurrence of the sequence's last n tokens. This is vLLM's "ngram" speculative method and
// llama.cpp's lookup decoding: no draft model, so drafting is free and works well on text
// that repeats its context (code edits, extraction, summaries quoting the prompt).
#ifndef DUET_COMMON_SPEC_NGRAM_PROPOSER_H_
#define DUET_COMMON_SPEC_NGRAM_PROPOSER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace duet::spec {

struct NgramConfig {
  int32_t min_n = 1;  // Shortest suffix worth matching.
  int32_t max_n = 4;  // Longest suffix tried first.

  // INVALID_ARGUMENT unless 1 <= min_n <= max_n.
  absl::Status Validate() const;
};

// `tokens`: the prompt followed by the generated tokens, the newest last. For n from
// config.max_n down to config.min_n, looks for the most recent earlier occurrence of the last
// n tokens (one that ends before the end of the sequence) and, for the first n that has one,
// returns min(k, tokens.size()) of the tokens that followed it. A continuation that reaches the
// end of the sequence goes on with the same period (the occurrence ending at `end` says the
// text repeats every size - end tokens): a run "a b a b a b" proposes "a b a b ..." for any k
// where plain lookup would stop after one period -- llama.cpp's lookup gets the same by
// appending each drafted token and looking up again. Empty when k <= 0 or nothing matches.
//
// Cost: one backward scan that compares at most max_n tokens at each end position and stops
// at the first occurrence of the full max_n suffix: O(tokens.size() * max_n) time in the worst
// case (no long match), O(1) extra memory besides the result. A few thousand tokens with
// max_n = 4 is a few microseconds, cheap enough to call every decode step.
// REQUIRES: config.Validate().ok() (violations abort).
std::vector<int32_t> ProposeNgram(absl::Span<const int32_t> tokens, int64_t k,
                                  const NgramConfig& config);

}  // namespace duet::spec

#endif  // DUET_COMMON_SPEC_NGRAM_PROPOSER_H_
