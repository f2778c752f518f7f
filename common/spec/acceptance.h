// Speculative decoding's acceptance step: given the tokens a cheap proposer drafted and the
// target model's verdict at every drafted position (one verification step runs the target on
// all of them at once), decides how many drafts to keep and which token follows them.
//
// A step that verifies k drafts emits num_accepted + 1 tokens (1 to k + 1): the kept drafts,
// then next_token, which is the target's own token at the first position it disagreed with
// (the correction) or, when every draft was kept, at the position after the last (the bonus).
//
// Both rules are lossless: the emitted tokens are distributed exactly as if the target had
// decoded them one at a time with the same sampling parameters (greedy: the same tokens).
// Pure CPU code; the sampled rule's randomness comes from the sequence's Sampler, so a given
// seed accepts and corrects the same way on every run and platform.
#ifndef DUET_COMMON_SPEC_ACCEPTANCE_H_
#define DUET_COMMON_SPEC_ACCEPTANCE_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "common/model/sampling.h"

namespace duet::spec {

struct Verdict {
  int64_t num_accepted = 0;  // drafts[0, num_accepted) are kept.
  int32_t next_token = 0;    // Follows the kept drafts: the correction or the bonus token.
};

// Greedy verification (temperature 0). target_tokens[i] is the target's greedy token at
// verified position i, i.e. its prediction for the token after drafts[i - 1] (position 0
// follows the already accepted context). Keeps the longest prefix with drafts[i] ==
// target_tokens[i]; next_token = target_tokens[num_accepted]. O(drafts.size()).
// REQUIRES: target_tokens.size() == drafts.size() + 1 (violations abort).
Verdict AcceptGreedy(absl::Span<const int32_t> drafts, absl::Span<const int32_t> target_tokens);

// Sampled verification: speculative sampling's rejection rule (Leviathan et al. 2023,
// "Fast Inference from Transformers via Speculative Decoding"; Chen et al. 2023,
// "Accelerating Large Language Model Decoding with Speculative Sampling").
//
// target_probs: drafts.size() + 1 dense distributions p_i over the vocab, each summing to 1:
//   what the target would sample from at verified position i (after its penalties and
//   filters, e.g. Densify(sampler.Distribution(...))).
// draft_probs: either empty, when each draft was chosen deterministically (greedy drafting,
//   n-gram lookup: q_i is a point mass on drafts[i]), or drafts.size() dense distributions
//   q_i over the same vocab that drafts[i] was sampled from.
//
// For i = 0, 1, ...: draft x = drafts[i] is accepted when u < p_i(x) / q_i(x), u = one
// rng.Uniform() (evaluated as u * q_i(x) < p_i(x), so q_i(x) == 0 accepts iff p_i(x) > 0).
// On the first rejection, next_token is drawn (rng.Draw) from the residual
// max(0, p_i - q_i), renormalized (from p_i itself if the residual is all zero, which only
// rounding can cause), and the step stops. When every draft is accepted, next_token is drawn
// from p_k, k = drafts.size().
//
// Why the output is exactly the target's: at a verified position, token t is emitted either
// as the accepted draft, with probability q(t) * min(1, p(t)/q(t)) = min(p(t), q(t)), or as
// the correction, with probability (1 - sum_s min(p(s), q(s))) * max(0, p(t) - q(t)) /
// sum_s max(0, p(s) - q(s)); the two normalizers are equal, so the total is
// min(p(t), q(t)) + max(0, p(t) - q(t)) = p(t). By induction every emitted token has the
// target's conditional distribution (tests/spec/acceptance_test.cc checks this statistically).
//
// Consumes one Uniform() per examined draft plus one Draw(). Cost O(num_examined + vocab).
// REQUIRES: target_probs.size() == drafts.size() + 1; draft_probs empty or of size
// drafts.size(); every distribution of the same non-zero size V, entries finite and >= 0;
// every draft in [0, V). Sizes and ids are checked (violations abort); entries only where
// they are read.
Verdict AcceptSampled(absl::Span<const int32_t> drafts,
                      absl::Span<const std::vector<double>> target_probs,
                      absl::Span<const std::vector<double>> draft_probs, Sampler& rng);

// A sparse distribution (Sampler::Distribution's tokens with non-zero probability) as a dense
// [vocab_size] vector; absent tokens get 0 and repeated tokens add up.
// REQUIRES: vocab_size > 0 and every token in [0, vocab_size) (violations abort).
std::vector<double> Densify(absl::Span<const TokenProb> dist, int32_t vocab_size);

}  // namespace duet::spec

#endif  // DUET_COMMON_SPEC_ACCEPTANCE_H_
