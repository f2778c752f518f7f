// Sampling: turns one step's logits into a token, with penalties, a seeded RNG, logprobs and
// stop-token checks. Pure CPU code with no device or clock dependencies.
//
// Sampler::Sample processes the logits in this order (the vLLM order):
//   1. penalties on a copy of the logits: repetition (prompt + generated tokens, once per
//      distinct token), then frequency and presence (generated tokens only);
//   2. temperature == 0: the ArgMax of the penalized logits, no randomness consumed;
//   3. temperature: logits / temperature, softmax;
//   4. top-k: keep the k highest logits;
//   5. top-p: keep the smallest highest-first prefix whose mass (renormalized over what
//      top-k kept) reaches top_p;
//   6. min-p: keep tokens whose probability is >= min_p * the highest probability;
//   7. draw one token from what is left, renormalized, with the sampler's RNG.
// Sorting always breaks ties by lower token id, so a given seed and input give the same token
// on every run and platform (the RNG is std::mt19937_64, whose output the standard fixes).
//
// Cost: the unfiltered path (top_k, top_p off; min_p any) is O(vocab). top-k uses
// nth_element plus a sort of the k survivors; top-p without top-k sorts incrementally
// (doubling chunks), so a peaked distribution only sorts its head. NaN logits are treated as
// -inf (never chosen).
#ifndef DUET_COMMON_MODEL_SAMPLING_H_
#define DUET_COMMON_MODEL_SAMPLING_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace duet {

// Most top logprobs a request may ask for (the OpenAI API limit).
inline constexpr int32_t kMaxTopLogprobs = 20;

struct SamplingParams {
  double temperature = 1.0;         // 0 = greedy; must be >= 0 and finite.
  int32_t top_k = 0;                // 0 = off (as is any k >= vocab); must be >= 0.
  double top_p = 1.0;               // In (0, 1]; 1 = off.
  double min_p = 0.0;               // In [0, 1]; 0 = off.
  double repetition_penalty = 1.0;  // > 0 and finite; 1 = off. CTRL-style: a positive logit
                                    // is divided by it, a negative one multiplied; applies
                                    // once to each distinct prompt or generated token.
  double frequency_penalty = 0.0;   // In [-2, 2]; subtracts penalty * count in generated.
  double presence_penalty = 0.0;    // In [-2, 2]; subtracts penalty if in generated.
  // RNG seed. The same seed gives the same tokens; callers that want fresh randomness per
  // request (OpenAI's default when no seed is given) must pick a random seed themselves.
  uint64_t seed = 0;
  int32_t top_logprobs = 0;               // Top-n logprobs to return, 0..kMaxTopLogprobs.
  std::vector<int32_t> stop_token_ids;    // Each in [0, vocab_size).
  std::vector<std::string> stop_strings;  // Each non-empty.

  // OK, or INVALID_ARGUMENT naming the first bad parameter and its value, e.g.
  // "temperature must be >= 0, got -1". Also rejects vocab_size <= 0.
  absl::Status Validate(int32_t vocab_size) const;
};

struct TokenLogprob {
  int32_t token;
  float logprob;
};

struct TokenProb {
  int32_t token;
  double prob;
};

struct SampleResult {
  int32_t token;
  // Of the chosen token under the raw model distribution: log_softmax of the logits before
  // penalties and temperature (vLLM's default logprobs mode).
  float logprob;
  // min(top_logprobs, vocab) entries of the same distribution, highest first (ties: lower id).
  std::vector<TokenLogprob> top_logprobs;
};

// Per-sequence sampler. Holds the parameters and the RNG state (no vocab-sized buffers), so it
// is cheap to create, copy and move. Not thread-safe: one sequence, one thread at a time.
class Sampler {
 public:
  // INVALID_ARGUMENT when params.Validate(vocab_size) fails. The RNG is seeded with
  // params.seed.
  static absl::StatusOr<Sampler> Create(const SamplingParams& params, int32_t vocab_size);

  // Picks the next token. `prompt`: the prompt ids; `generated`: the ids generated so far.
  // REQUIRES: logits.size() == vocab_size, and every id in prompt and generated is in
  // [0, vocab_size) (violations abort: they are caller bugs, not bad user input).
  SampleResult Sample(absl::Span<const float> logits, absl::Span<const int32_t> prompt,
                      absl::Span<const int32_t> generated);

  // The distribution Sample() would draw from, after steps 1-6: the tokens with non-zero
  // probability, highest first (ties: lower id), probabilities summing to 1. With
  // temperature 0 it is the ArgMax with probability 1. Consumes no randomness. Same
  // REQUIRES as Sample(); O(vocab log vocab), meant for tests and debugging.
  std::vector<TokenProb> Distribution(absl::Span<const float> logits,
                                      absl::Span<const int32_t> prompt,
                                      absl::Span<const int32_t> generated) const;

  // Step 1 alone, in place: what Sample() does to its copy of the logits. Same REQUIRES as
  // Sample() (logits.size() == vocab_size).
  void ApplyPenalties(absl::Span<float> logits, absl::Span<const int32_t> prompt,
                      absl::Span<const int32_t> generated) const;

  // True when `token` is one of params().stop_token_ids.
  bool IsStopToken(int32_t token) const;

  // Raw draws from this sampler's RNG, for callers that sample outside Sample() (speculative
  // acceptance) but must stay seeded like it: a copy of the sampler continues the same
  // stream, and every platform draws the same values.
  //
  // One draw in [0, 1): the top 53 bits of one 64-bit RNG output, times 2^-53.
  double Uniform();
  // An index drawn with probability weights[i] / sum(weights), using exactly one Uniform();
  // indices with weight 0 are never drawn. O(weights.size()).
  // REQUIRES: every weight is finite and >= 0, and their sum is > 0 (violations abort).
  int32_t Draw(absl::Span<const double> weights);

  const SamplingParams& params() const { return params_; }
  int32_t vocab_size() const { return vocab_size_; }

 private:
  // What survives steps 1-6, with weights exp((logit - max) / temperature), so the top token
  // weighs exactly 1. Either `all`: weights[t] for every token t, kept when >= min_weight; or
  // the listed ids, highest logit first, with weights[i] belonging to ids[i].
  struct Kept {
    bool all = true;
    float min_weight = 0.0f;     // Only when all.
    std::vector<int32_t> ids;    // Only when !all.
    std::vector<float> weights;  // [vocab_size] when all, else [ids.size()].
  };

  Sampler(SamplingParams params, int32_t vocab_size);

  // Sanitized (NaN -> -inf) and penalized copy of `logits`.
  std::vector<float> PenalizedCopy(absl::Span<const float> logits, absl::Span<const int32_t> prompt,
                                   absl::Span<const int32_t> generated) const;
  // Steps 3-6 on penalized logits. REQUIRES: temperature > 0.
  Kept Filter(const std::vector<float>& penalized) const;
  // Fills logprob and top_logprobs of `result` from the raw logits.
  void FillLogprobs(absl::Span<const float> logits, SampleResult* result) const;

  SamplingParams params_;
  int32_t vocab_size_;
  std::mt19937_64 rng_;
};

// Greedy choice: the index of the largest logit, lowest id on ties; NaN is never chosen
// (returns 0 when every logit is NaN or -inf). REQUIRES: !logits.empty().
int32_t ArgMax(absl::Span<const float> logits);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_SAMPLING_H_
