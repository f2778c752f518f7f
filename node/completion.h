// One request's completion as a node produces it: the resolved sampling parameters (from
// duet.v1.SamplingParams), sampling with a per-token seed, and the stop conditions (EOS,
// stop_token_ids, stop strings, max_tokens).
//
// Seeding: token i of a completion (i = 0 for the first token, which the prefill node or the
// colocated node's last prefill chunk samples) is drawn by a Sampler seeded with
// TokenSeed(seed, i). So the tokens depend only on (seed, i, logits) and not on which node
// samples them: a request split across a prefill and a decode node samples exactly what one
// node sampling the whole completion would. (Greedy sampling consumes no randomness.)
//
// Thread safety: Completion is not thread-safe (the node's worker owns it).
#ifndef DUET_NODE_COMPLETION_H_
#define DUET_NODE_COMPLETION_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model/detokenizer.h"
#include "common/model/sampling.h"
#include "common/model/stop_strings.h"
#include "common/model/tokenizer.h"
#include "duet/v1/types.pb.h"

namespace duet::node {

struct RequestSampling {
  SamplingParams params;   // seed resolved (random when the request has none)
  int64_t max_tokens = 0;  // 0 when the request did not set it (prefill nodes need none)
  bool ignore_eos = false;

  // True when sampling is the ArgMax of the raw logits: temperature 0, no penalties, no
  // logprobs (so Engine::DecodeStepGreedy gives the same token).
  bool greedy_argmax() const;
};

// Resolves and checks a request's sampling parameters against the model's vocab. Absent fields
// take the defaults of duet.v1.SamplingParams (temperature 1, top_p 1, ...; seed: random).
// INVALID_ARGUMENT naming the field ("sampling.max_tokens must be >= 1, got 0"; Validate's
// messages); require_max_tokens: max_tokens must be set.
absl::StatusOr<RequestSampling> ResolveSampling(const v1::SamplingParams& proto, int32_t vocab_size,
                                                bool require_max_tokens);

// The seed of completion token `index` (a SplitMix64 mix of both).
uint64_t TokenSeed(uint64_t seed, int64_t index);

v1::TokenLogprobs ToProto(const SampleResult& result);

// Why a completion ends after a token.
enum class StopKind { kNone, kEos, kStopToken, kStopString, kLength };

v1::FinishReason ToFinishReason(StopKind kind);

class Completion {
 public:
  // `prompt`: the prompt ids for repetition penalties (may be empty when the node was not told
  // them). REQUIRES: tokenizer outlives this; sampling came from ResolveSampling.
  Completion(const Tokenizer* tokenizer, RequestSampling sampling, std::vector<int32_t> prompt,
             int32_t vocab_size);

  // Samples completion token number generated().size() from `logits` [vocab].
  SampleResult Sample(absl::Span<const float> logits) const;

  // Speculative decoding. The distribution completion token generated().size() + drafts.size()
  // is drawn from when the tokens before it are generated() then `drafts` (penalties over
  // both), dense over the vocab: Sample's distribution for that token.
  std::vector<double> Distribution(absl::Span<const float> logits,
                                   absl::Span<const int32_t> drafts) const;
  // The RNG of a speculative step whose first token is completion token generated().size():
  // a Sampler seeded with TokenSeed of that index (as Sample would be).
  Sampler StepSampler() const;

  // Records the next completion token and returns why the completion ends after it (kNone:
  // it goes on). Checked in this order: EOS (unless ignore_eos), stop_token_ids, stop strings
  // (over the detokenized text), max_tokens. Once it returned a stop, the completion is over.
  StopKind Append(int32_t token);

  // Restores a completion resumed after a preemption: appends `tokens`, the completion tokens
  // it had produced. INVALID_ARGUMENT when they already end it (a stop condition before or at
  // the last one) or an id is outside the vocab.
  absl::Status Resume(absl::Span<const int32_t> tokens);

  const std::vector<int32_t>& generated() const { return generated_; }
  const RequestSampling& sampling() const { return sampling_; }
  int32_t num_logprobs() const { return sampling_.params.top_logprobs; }
  StopKind stop() const { return stop_; }

 private:
  const Tokenizer* tokenizer_;
  RequestSampling sampling_;
  std::vector<int32_t> prompt_;
  int32_t vocab_size_;
  std::vector<int32_t> generated_;
  std::optional<StreamingDetokenizer> detokenizer_;  // only with stop strings
  std::optional<StopStringMatcher> stop_matcher_;
  StopKind stop_ = StopKind::kNone;
};

}  // namespace duet::node

#endif  // DUET_NODE_COMPLETION_H_
