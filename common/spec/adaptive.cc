// Adaptive speculation length (see adaptive.h for the model and the decision rule).
#include "common/spec/adaptive.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/spec/check.h"

namespace duet::spec {
namespace {

void CheckConfig(const AdaptiveConfig& config) {
  if (absl::Status status = config.Validate(); !status.ok()) Die(status.ToString());
}

bool NonNegativeFinite(double x) { return std::isfinite(x) && x >= 0; }

}  // namespace

StepCostModel::StepCostModel(double prior_fixed_s, double prior_per_row_s, double decay)
    : decay_(decay), fixed_(prior_fixed_s), per_row_(prior_per_row_s) {
  if (!NonNegativeFinite(prior_fixed_s) || !NonNegativeFinite(prior_per_row_s)) {
    Die(absl::StrCat("priors must be finite and >= 0, got ", prior_fixed_s, " and ",
                     prior_per_row_s));
  }
  if (!(decay > 0 && decay <= 1)) Die(absl::StrCat("decay must be in (0, 1], got ", decay));
}

void StepCostModel::Observe(int64_t rows, double seconds) {
  if (rows < 0) Die(absl::StrCat("rows must be >= 0, got ", rows));
  if (!NonNegativeFinite(seconds)) return;
  if (!any_) {
    any_ = true;
    first_rows_ = rows;
  } else if (rows != first_rows_) {
    distinct_ = true;
  }
  weight_ *= decay_;
  co_rows_rows_ *= decay_;
  co_rows_seconds_ *= decay_;
  const double x = static_cast<double>(rows);
  const double dx = x - mean_rows_;
  weight_ += 1;
  mean_rows_ += dx / weight_;
  mean_seconds_ += (seconds - mean_seconds_) / weight_;
  co_rows_rows_ += dx * (x - mean_rows_);
  co_rows_seconds_ += dx * (seconds - mean_seconds_);
  Refit();
}

void StepCostModel::Refit() {
  if (!distinct_ || !(co_rows_rows_ > 0)) return;
  fitted_ = true;
  double b = co_rows_seconds_ / co_rows_rows_;
  double a = mean_seconds_ - b * mean_rows_;
  if (b < 0) {
    // Best flat line: the weighted mean (>= 0, as every observation is).
    b = 0;
    a = mean_seconds_;
  } else if (a < 0) {
    // Best line through the origin: sum w x y / sum w x^2 (>= 0), from the centered moments.
    a = 0;
    b = (co_rows_seconds_ + weight_ * mean_rows_ * mean_seconds_) /
        (co_rows_rows_ + weight_ * mean_rows_ * mean_rows_);
  }
  fixed_ = a;
  per_row_ = b;
}

double StepCostModel::Predict(int64_t rows) const {
  return fixed_ + per_row_ * static_cast<double>(rows);
}

absl::Status AdaptiveConfig::Validate() const {
  if (max_draft_tokens < 1 || max_draft_tokens > 31) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_draft_tokens must be in [1, 31], got ", max_draft_tokens));
  }
  if (!(initial_acceptance >= 0 && initial_acceptance <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("initial_acceptance must be in [0, 1], got ", initial_acceptance));
  }
  if (!(ema_weight > 0 && ema_weight <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ema_weight must be in (0, 1], got ", ema_weight));
  }
  if (!(min_speedup > 0) || !std::isfinite(min_speedup)) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_speedup must be finite and > 0, got ", min_speedup));
  }
  if (probe_interval < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("probe_interval must be >= 0, got ", probe_interval));
  }
  return absl::OkStatus();
}

AcceptanceTracker::AcceptanceTracker(const AdaptiveConfig& config)
    : ema_weight_(config.ema_weight), successes_(config.initial_acceptance), trials_(1) {
  CheckConfig(config);
}

void AcceptanceTracker::Record(int64_t drafted, int64_t accepted) {
  if (accepted < 0 || accepted > drafted) {
    Die(absl::StrCat("need 0 <= accepted <= drafted, got ", accepted, " of ", drafted));
  }
  if (drafted == 0) {
    ++steps_since_draft_;
    return;
  }
  steps_since_draft_ = 0;
  const double successes = static_cast<double>(accepted);
  const double trials = successes + (accepted < drafted ? 1.0 : 0.0);  // >= 1 as drafted > 0.
  successes_ = (1 - ema_weight_) * successes_ + ema_weight_ * successes;
  trials_ = (1 - ema_weight_) * trials_ + ema_weight_ * trials;
}

double ExpectedTokensPerStep(double alpha, int64_t k) {
  if (alpha >= 1) return static_cast<double>(k + 1);
  return (1 - std::pow(alpha, static_cast<double>(k + 1))) / (1 - alpha);
}

int64_t ChooseDraftTokens(const AcceptanceTracker& seq, const StepCostModel& target,
                          double draft_cost_per_token_s, int64_t batch_rows_without_drafts,
                          const AdaptiveConfig& config) {
  CheckConfig(config);
  if (!NonNegativeFinite(draft_cost_per_token_s)) {
    Die(absl::StrCat("draft_cost_per_token_s must be finite and >= 0, got ",
                     draft_cost_per_token_s));
  }
  const int64_t rows = std::max<int64_t>(1, batch_rows_without_drafts);
  const double others = static_cast<double>(rows - 1);
  const double t0 = target.Predict(rows);
  // The best k and its S(k) at acceptance rate alpha.
  auto best = [&](double alpha, double* best_speedup) {
    int64_t best_k = 0;
    *best_speedup = 1;  // S(0).
    for (int64_t k = 1; k <= config.max_draft_tokens; ++k) {
      const double expected = ExpectedTokensPerStep(alpha, k);
      const double tk = target.Predict(rows + k) + static_cast<double>(k) * draft_cost_per_token_s;
      // A free step (a model that predicts 0 s) makes every draft free.
      const double speedup = tk > 0 ? (expected * t0 - others * (tk - t0)) / tk : expected;
      if (speedup > *best_speedup) {
        *best_speedup = speedup;
        best_k = k;
      }
    }
    return best_k;
  };
  double speedup = 1;
  const int64_t k = best(seq.rate(), &speedup);
  if (k > 0 && speedup >= config.min_speedup) return k;
  // Probe every probe_interval steps where speculation could pay, and kHopelessProbeFactor
  // times less often where even drafts that are always accepted would cost more than they
  // save (a slow draft, a compute-bound batch): the cost model learns multi-row steps only
  // from steps that draft, so a verdict from stale or skewed observations must be re-tested.
  if (config.probe_interval <= 0) return 0;
  double perfect = 1;
  best(1.0, &perfect);
  const int64_t interval = perfect >= config.min_speedup
                               ? config.probe_interval
                               : kHopelessProbeFactor * config.probe_interval;
  return seq.steps_since_draft() >= interval ? 1 : 0;
}

}  // namespace duet::spec
