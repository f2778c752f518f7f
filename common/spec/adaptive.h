// Adaptive speculation length: how many tokens to draft for a sequence in the next step,
// from its recent acceptance rate and a learned model of the node's step time.
//
// Speculation pays when verifying k drafts costs little more than decoding one token
// (decode is memory-bound: a step's time is mostly reading the weights, whatever the number
// of rows) and the drafts are likely to be kept. It loses when the batch is already
// compute-bound (each extra row costs as much as a row of another sequence) or the text
// stopped being predictable. The decision is re-made every step:
//
//   alpha = the sequence's per-token acceptance rate (AcceptanceTracker::rate())
//   E(k)  = (1 - alpha^(k+1)) / (1 - alpha)    expected tokens a step emits with k drafts
//           (k + 1 when alpha == 1; the kept drafts plus the correction or bonus token)
//   B     = max(1, batch_rows_without_drafts)  rows of the step before this sequence's drafts
//   T(k)  = target.Predict(B + k) + k * draft_cost_per_token_s     the step's time
//   S(k)  = [E(k) * T(0) - (B - 1) * (T(k) - T(0))] / T(k)
//
// S(k) is this sequence's speedup, E(k) / T(k) relative to 1 / T(0), minus what its drafts
// cost the B - 1 other rows of the batch, each of which now emits its token at rate
// 1 / T(k) instead of 1 / T(0). Equivalently S(k) = B * R(k) - (B - 1), where R(k) is the
// batch's tokens per second with these drafts relative to without, so maximizing S maximizes
// the node's throughput. For a batch of one, S(k) is exactly E(k) * T(0) / T(k).
// ChooseDraftTokens returns the k in [0, max_draft_tokens] with the largest S(k) (the smaller
// k on ties) when S(k) >= min_speedup, else 0; but a sequence that has not drafted for
// probe_interval steps gets 1 draft (a probe), so one whose text became repetitive again can
// earn speculation back (its rate only moves on steps that draft). Where not even drafts that
// are always accepted would reach min_speedup under the cost model, probes come
// kHopelessProbeFactor times less often, but they still come: the model sees multi-row steps
// only when someone drafts, so a verdict from one skewed step (a stall) gets re-tested.
//
// Pure, deterministic arithmetic with no clock: callers measure step times and feed them to
// StepCostModel::Observe. Not thread-safe (one scheduler thread owns these).
#ifndef DUET_COMMON_SPEC_ADAPTIVE_H_
#define DUET_COMMON_SPEC_ADAPTIVE_H_

#include <cstdint>

#include "absl/status/status.h"

namespace duet::spec {

// A node's step time as a function of the rows (tokens) the step runs: the least-squares line
// seconds = a + b * rows over an exponentially decayed window of observations (each older by
// one observation weighs `decay` times less), with b >= 0 and a >= 0. Until it has seen two
// distinct row counts it predicts with the prior line.
class StepCostModel {
 public:
  // REQUIRES: priors finite and >= 0; decay in (0, 1] (violations abort).
  StepCostModel(double prior_fixed_s, double prior_per_row_s, double decay = 0.98);

  // One measured step. REQUIRES: rows >= 0 (violations abort). Non-finite or negative
  // seconds (a clock glitch) are ignored.
  void Observe(int64_t rows, double seconds);

  // Predicted seconds for a step of `rows` rows: fixed_s() + per_row_s() * rows.
  double Predict(int64_t rows) const;

  // The current line (the prior until the fit exists).
  double fixed_s() const { return fixed_; }
  double per_row_s() const { return per_row_; }
  // True once observations at two distinct row counts replaced the prior.
  bool fitted() const { return fitted_; }

 private:
  // Refits fixed_/per_row_ from the weighted moments.
  void Refit();

  double decay_;
  double fixed_;
  double per_row_;
  bool fitted_ = false;
  bool any_ = false;        // At least one observation.
  int64_t first_rows_ = 0;  // Rows of the first observation (to detect a second count).
  bool distinct_ = false;   // Observations at two distinct row counts.
  // Decayed weighted moments, kept centered (West's weighted update) so a long run at one row
  // count does not cancel the spread left by older observations.
  double weight_ = 0;
  double mean_rows_ = 0;
  double mean_seconds_ = 0;
  double co_rows_rows_ = 0;     // sum w (rows - mean_rows)^2
  double co_rows_seconds_ = 0;  // sum w (rows - mean_rows)(seconds - mean_seconds)
};

// How many times probe_interval a sequence waits for a probe where speculation looks hopeless.
inline constexpr int64_t kHopelessProbeFactor = 8;

struct AdaptiveConfig {
  int64_t max_draft_tokens = 4;     // In [1, 31].
  double initial_acceptance = 0.6;  // A new sequence's alpha, in [0, 1].
  double ema_weight = 0.3;          // Weight of the newest step in the alpha EMA, in (0, 1].
  double min_speedup = 1.05;        // S(k) needed to speculate; finite, > 0.
  int64_t probe_interval = 16;      // Steps without drafts before a probe; 0 = never probe.

  // INVALID_ARGUMENT naming the first field out of range.
  absl::Status Validate() const;
};

// One sequence's acceptance history. A step that kept a of d > 0 drafts is evidence
// alpha^a * (1 - alpha) when a < d (a successes, then a failure) and alpha^d when a == d, so
// the maximum-likelihood alpha over several steps is successes / trials = sum a /
// sum (a + (a < d ? 1 : 0)). rate() is that ratio over exponentially decayed sums: each
// step's successes and trials enter with weight ema_weight, older ones decay by
// (1 - ema_weight), and the prior counts as one trial with initial_acceptance successes. With
// ema_weight 1 it is the last step's x = a / (a + (a < d ? 1 : 0)). (An EMA of the per-step ratios
// x would be biased low: at alpha 0.7 with 4 drafts their mean is 0.52.) Steps that drafted nothing
// leave the rate alone and count towards the next probe.
class AcceptanceTracker {
 public:
  // REQUIRES: config.Validate().ok().
  explicit AcceptanceTracker(const AdaptiveConfig& config = AdaptiveConfig{});

  // One verification step. REQUIRES: 0 <= accepted <= drafted (violations abort).
  void Record(int64_t drafted, int64_t accepted);

  // The estimated per-token acceptance probability alpha, in [0, 1].
  double rate() const { return successes_ / trials_; }
  // Steps recorded with drafted == 0 since the last step that drafted (or since creation).
  int64_t steps_since_draft() const { return steps_since_draft_; }

 private:
  double ema_weight_;
  double successes_;  // Decayed sum of accepted drafts (plus the prior's).
  double trials_;     // Decayed sum of trials (plus the prior's one); always > 0.
  int64_t steps_since_draft_ = 0;
};

// The number of tokens to draft for `seq` in the next step (see the top of this file).
// `batch_rows_without_drafts`: the rows the step will run before this sequence's drafts,
// counting this sequence's own row (decode rows, one token each; other sequences' drafts
// already chosen may be included). O(max_draft_tokens).
// REQUIRES: config.Validate().ok(), draft_cost_per_token_s finite and >= 0 (violations abort).
int64_t ChooseDraftTokens(const AcceptanceTracker& seq, const StepCostModel& target,
                          double draft_cost_per_token_s, int64_t batch_rows_without_drafts,
                          const AdaptiveConfig& config);

// E(k) above: expected tokens emitted by a step with k drafts at per-token acceptance alpha.
double ExpectedTokensPerStep(double alpha, int64_t k);

}  // namespace duet::spec

#endif  // DUET_COMMON_SPEC_ADAPTIVE_H_
