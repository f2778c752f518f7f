// Tests of the adaptive draft length: the step-cost fit, the acceptance estimate and the
// decision on synthetic memory-bound and compute-bound cost models.
#include "common/spec/adaptive.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>

namespace duet::spec {
namespace {

using ::testing::HasSubstr;

// ---- StepCostModel ----

TEST(StepCostModelTest, UsesThePriorUntilTwoDistinctRowCounts) {
  StepCostModel model(0.01, 0.001);
  EXPECT_FALSE(model.fitted());
  EXPECT_DOUBLE_EQ(model.Predict(10), 0.02);
  model.Observe(8, 0.5);
  model.Observe(8, 0.7);
  EXPECT_FALSE(model.fitted());
  EXPECT_DOUBLE_EQ(model.Predict(10), 0.02);
  model.Observe(9, 0.6);
  EXPECT_TRUE(model.fitted());
}

TEST(StepCostModelTest, RecoversAnExactLine) {
  StepCostModel model(1.0, 1.0);
  for (int round = 0; round < 5; ++round) {
    for (int64_t rows = 1; rows <= 40; rows += 3) model.Observe(rows, 0.02 + 0.0004 * rows);
  }
  EXPECT_NEAR(model.fixed_s(), 0.02, 1e-12);
  EXPECT_NEAR(model.per_row_s(), 0.0004, 1e-13);
  EXPECT_NEAR(model.Predict(100), 0.06, 1e-11);
}

TEST(StepCostModelTest, FitsNoisyDataByLeastSquares) {
  StepCostModel model(0, 0, /*decay=*/1.0);  // No decay: the ordinary least-squares line.
  // Points (1, 1), (2, 3), (3, 2): slope 0.5, intercept 1.
  model.Observe(1, 1);
  model.Observe(2, 3);
  model.Observe(3, 2);
  EXPECT_NEAR(model.per_row_s(), 0.5, 1e-12);
  EXPECT_NEAR(model.fixed_s(), 1.0, 1e-12);
}

TEST(StepCostModelTest, ForgetsAnOldRegime) {
  StepCostModel model(0, 0);
  for (int i = 0; i < 300; ++i) model.Observe(1 + i % 8, 0.050 + 0.002 * (1 + i % 8));
  for (int i = 0; i < 300; ++i) model.Observe(1 + i % 8, 0.010 + 0.001 * (1 + i % 8));
  // 0.98^300 ~ 0.002 of the weight is left on the old line.
  EXPECT_NEAR(model.fixed_s(), 0.010, 5e-4);
  EXPECT_NEAR(model.per_row_s(), 0.001, 1e-4);
}

TEST(StepCostModelTest, KeepsTheSpreadOfOldRowCountsAfterALongRunAtOne) {
  StepCostModel model(0, 0);
  model.Observe(1, 0.011);
  model.Observe(9, 0.019);
  for (int i = 0; i < 1000; ++i) model.Observe(1, 0.011);
  // Two distinct row counts, both on the line 0.01 + 0.001 rows, however old one is.
  EXPECT_NEAR(model.fixed_s(), 0.010, 1e-9);
  EXPECT_NEAR(model.per_row_s(), 0.001, 1e-9);
}

TEST(StepCostModelTest, ClampsNegativeSlopeAndIntercept) {
  StepCostModel falling(0, 0, 1.0);
  falling.Observe(1, 0.03);
  falling.Observe(3, 0.01);
  EXPECT_EQ(falling.per_row_s(), 0.0);
  EXPECT_NEAR(falling.fixed_s(), 0.02, 1e-12);  // The mean.

  StepCostModel steep(0, 0, 1.0);
  steep.Observe(2, 0.01);
  steep.Observe(4, 0.03);  // Line -0.01 + 0.01 rows: intercept clamped, refit through 0.
  EXPECT_EQ(steep.fixed_s(), 0.0);
  // sum x y / sum x^2 = (0.02 + 0.12) / 20.
  EXPECT_NEAR(steep.per_row_s(), 0.007, 1e-12);
}

TEST(StepCostModelTest, IgnoresBadTimes) {
  StepCostModel model(0.01, 0.001);
  model.Observe(1, -1.0);
  model.Observe(2, std::numeric_limits<double>::quiet_NaN());
  model.Observe(3, std::numeric_limits<double>::infinity());
  EXPECT_FALSE(model.fitted());
  EXPECT_DOUBLE_EQ(model.Predict(0), 0.01);
}

TEST(StepCostModelDeathTest, NegativeRowsAbort) {
  StepCostModel model(0.01, 0.001);
  EXPECT_DEATH(model.Observe(-1, 0.01), "rows must be >= 0");
}

// ---- AcceptanceTracker ----

TEST(AcceptanceTrackerTest, StartsAtTheInitialAcceptance) {
  AdaptiveConfig config;
  config.initial_acceptance = 0.25;
  EXPECT_DOUBLE_EQ(AcceptanceTracker(config).rate(), 0.25);
  EXPECT_DOUBLE_EQ(AcceptanceTracker().rate(), 0.6);
}

TEST(AcceptanceTrackerTest, HandComputedUpdates) {
  AcceptanceTracker tracker;  // Prior 0.6 of 1 trial, ema_weight 0.3.
  tracker.Record(4, 4);       // 4 of 4 trials.
  EXPECT_NEAR(tracker.rate(), (0.7 * 0.6 + 0.3 * 4) / (0.7 * 1 + 0.3 * 4), 1e-12);
  tracker.Record(4, 1);  // 1 success, then a rejection: 1 of 2 trials.
  const double successes = 0.7 * (0.7 * 0.6 + 0.3 * 4) + 0.3 * 1;
  const double trials = 0.7 * (0.7 * 1 + 0.3 * 4) + 0.3 * 2;
  EXPECT_NEAR(tracker.rate(), successes / trials, 1e-12);
}

TEST(AcceptanceTrackerTest, WithFullWeightTheRateIsTheLastStep) {
  AdaptiveConfig config;
  config.ema_weight = 1.0;
  AcceptanceTracker tracker(config);
  tracker.Record(4, 2);
  EXPECT_DOUBLE_EQ(tracker.rate(), 2.0 / 3.0);
  tracker.Record(3, 0);
  EXPECT_DOUBLE_EQ(tracker.rate(), 0.0);
  tracker.Record(3, 3);
  EXPECT_DOUBLE_EQ(tracker.rate(), 1.0);
}

TEST(AcceptanceTrackerTest, StepsWithoutDraftsOnlyCountTowardsAProbe) {
  AcceptanceTracker tracker;
  tracker.Record(0, 0);
  tracker.Record(0, 0);
  EXPECT_EQ(tracker.steps_since_draft(), 2);
  EXPECT_DOUBLE_EQ(tracker.rate(), 0.6);
  tracker.Record(2, 1);
  EXPECT_EQ(tracker.steps_since_draft(), 0);
}

TEST(AcceptanceTrackerTest, ConvergesToTheTrueAcceptanceRate) {
  // Drafts accepted independently with probability 0.7 until the first rejection.
  AdaptiveConfig config;
  config.ema_weight = 0.02;
  AcceptanceTracker tracker(config);
  std::mt19937_64 rng(3);
  std::bernoulli_distribution accept(0.7);
  for (int step = 0; step < 3000; ++step) {
    int64_t a = 0;
    while (a < 4 && accept(rng)) ++a;
    tracker.Record(4, a);
  }
  EXPECT_NEAR(tracker.rate(), 0.7, 0.05);
}

TEST(AcceptanceTrackerDeathTest, MoreAcceptedThanDraftedAborts) {
  AcceptanceTracker tracker;
  EXPECT_DEATH(tracker.Record(2, 3), "accepted <= drafted");
}

// ---- ChooseDraftTokens ----

AcceptanceTracker TrackerAt(double alpha) {
  AdaptiveConfig config;
  config.initial_acceptance = alpha;
  return AcceptanceTracker(config);
}

TEST(ExpectedTokensTest, Values) {
  EXPECT_DOUBLE_EQ(ExpectedTokensPerStep(0.5, 0), 1.0);
  EXPECT_DOUBLE_EQ(ExpectedTokensPerStep(0.5, 2), 1.75);
  EXPECT_DOUBLE_EQ(ExpectedTokensPerStep(0.0, 4), 1.0);
  EXPECT_DOUBLE_EQ(ExpectedTokensPerStep(1.0, 4), 5.0);
}

// Memory-bound decode: 20 ms to read the weights, 0.05 ms per row; a draft model at 2 ms per
// token.
const StepCostModel kMemoryBound(0.020, 0.00005);
constexpr double kDraftModelCost = 0.002;

TEST(ChooseDraftTokensTest, MemoryBoundWithHighAcceptanceDraftsMany) {
  EXPECT_EQ(ChooseDraftTokens(TrackerAt(0.8), kMemoryBound, kDraftModelCost, 1, AdaptiveConfig{}),
            4);
  // With room for 8, S(k) = E(k) * 20.05 / (20.05 + 2.05 k) is 1.63, 2.03, 2.26, 2.39, 2.44,
  // 2.449, 2.43, 2.38 for k = 1..8: the draft model's cost caps it at 6.
  AdaptiveConfig config;
  config.max_draft_tokens = 8;
  EXPECT_EQ(ChooseDraftTokens(TrackerAt(0.8), kMemoryBound, kDraftModelCost, 1, config), 6);
  // Free drafts (n-gram lookup) and a batch of 64: every row is nearly free, take them all.
  EXPECT_EQ(ChooseDraftTokens(TrackerAt(0.8), kMemoryBound, 0.0, 64, config), 8);
}

TEST(ChooseDraftTokensTest, LowAcceptanceDraftsNothing) {
  // S(1) = 1.1 * 20.05 / 22.1 < 1.
  EXPECT_EQ(ChooseDraftTokens(TrackerAt(0.1), kMemoryBound, kDraftModelCost, 1, AdaptiveConfig{}),
            0);
}

TEST(ChooseDraftTokensTest, ComputeBoundBatchDraftsNothing) {
  // 1 ms fixed, 0.1 ms per row: at 256 rows an extra row costs as much as another sequence's
  // token, so even free drafts at alpha 0.8 lower the node's throughput.
  const StepCostModel compute_bound(0.001, 0.0001);
  EXPECT_EQ(ChooseDraftTokens(TrackerAt(0.8), compute_bound, 0.0, 256, AdaptiveConfig{}), 0);
  // Alone, the same sequence gains: 1.1 ms for one token vs 1.5 ms for 3.36.
  EXPECT_GT(ChooseDraftTokens(TrackerAt(0.8), compute_bound, 0.0, 1, AdaptiveConfig{}), 0);
}

TEST(ChooseDraftTokensTest, MinSpeedupIsRequired) {
  // Alone with free drafts on a flat cost, S(k) = E(k): 1.1 at alpha 0.1 and k = 1 (1.111 at 4).
  const StepCostModel flat(0.02, 0.0);
  AdaptiveConfig config;
  config.min_speedup = 1.2;
  EXPECT_EQ(ChooseDraftTokens(TrackerAt(0.1), flat, 0.0, 1, config), 0);
  config.min_speedup = 1.1;
  EXPECT_EQ(ChooseDraftTokens(TrackerAt(0.1), flat, 0.0, 1, config), 4);
}

TEST(ChooseDraftTokensTest, ProbesAfterProbeInterval) {
  AcceptanceTracker tracker = TrackerAt(0.1);
  const AdaptiveConfig config;
  for (int step = 0; step < 15; ++step) {
    ASSERT_EQ(ChooseDraftTokens(tracker, kMemoryBound, kDraftModelCost, 1, config), 0) << step;
    tracker.Record(0, 0);
  }
  tracker.Record(0, 0);  // 16 steps without drafts.
  EXPECT_EQ(ChooseDraftTokens(tracker, kMemoryBound, kDraftModelCost, 1, config), 1);
  tracker.Record(1, 0);  // The probe was rejected: back to waiting.
  EXPECT_EQ(ChooseDraftTokens(tracker, kMemoryBound, kDraftModelCost, 1, config), 0);

  AdaptiveConfig never = config;
  never.probe_interval = 0;
  for (int step = 0; step < 100; ++step) tracker.Record(0, 0);
  EXPECT_EQ(ChooseDraftTokens(tracker, kMemoryBound, kDraftModelCost, 1, never), 0);
}

TEST(ChooseDraftTokensTest, HopelessCostModelStillProbesButRarely) {
  // Every row costs 10 ms and nothing else does: even drafts that are always accepted give
  // S(k) = (k + 1) * 10 ms / ((k + 1) * 10 ms) = 1 < min_speedup, so the probe waits
  // kHopelessProbeFactor intervals -- but comes, since the model may be wrong.
  const StepCostModel hopeless(0.0, 0.010);
  AcceptanceTracker tracker = TrackerAt(0.9);
  const AdaptiveConfig config;
  EXPECT_EQ(ChooseDraftTokens(tracker, hopeless, 0.0, 1, config), 0);
  for (int64_t step = 1; step < kHopelessProbeFactor * config.probe_interval; ++step) {
    tracker.Record(0, 0);
    ASSERT_EQ(ChooseDraftTokens(tracker, hopeless, 0.0, 1, config), 0) << step;
  }
  tracker.Record(0, 0);
  EXPECT_EQ(ChooseDraftTokens(tracker, hopeless, 0.0, 1, config), 1);
  // Where perfect drafts would pay, the same tracker probes after probe_interval.
  AcceptanceTracker again = TrackerAt(0.0);
  for (int64_t step = 0; step < config.probe_interval; ++step) again.Record(0, 0);
  EXPECT_EQ(ChooseDraftTokens(again, kMemoryBound, 0.0, 1, config), 1);
  AdaptiveConfig never = config;
  never.probe_interval = 0;
  EXPECT_EQ(ChooseDraftTokens(tracker, hopeless, 0.0, 1, never), 0);
}

TEST(ChooseDraftTokensTest, ProbeThatHitsTurnsSpeculationBackOn) {
  AcceptanceTracker tracker = TrackerAt(0.1);
  for (int step = 0; step < 16; ++step) tracker.Record(0, 0);
  ASSERT_EQ(ChooseDraftTokens(tracker, kMemoryBound, kDraftModelCost, 1, AdaptiveConfig{}), 1);
  // The text became repetitive: the probe and then longer drafts keep being accepted.
  int64_t k = 1;
  for (int step = 0; step < 10 && k > 0; ++step) {
    tracker.Record(k, k);
    k = ChooseDraftTokens(tracker, kMemoryBound, kDraftModelCost, 1, AdaptiveConfig{});
  }
  EXPECT_EQ(k, 4);
}

TEST(ChooseDraftTokensTest, LearnedCostModelDrivesTheDecision) {
  StepCostModel learned(0.0, 0.01);  // A pessimistic prior: every row 10 ms.
  EXPECT_EQ(ChooseDraftTokens(TrackerAt(0.8), learned, 0.0, 8, AdaptiveConfig{}), 0);
  for (int i = 0; i < 50; ++i) learned.Observe(8 + i % 5, 0.020 + 0.00005 * (8 + i % 5));
  EXPECT_EQ(ChooseDraftTokens(TrackerAt(0.8), learned, 0.0, 8, AdaptiveConfig{}), 4);
}

TEST(AdaptiveConfigTest, Validate) {
  EXPECT_TRUE(AdaptiveConfig{}.Validate().ok());
  struct BadField {
    void (*set)(AdaptiveConfig&);
    const char* name;
  };
  const BadField cases[] = {
      {[](AdaptiveConfig& c) { c.max_draft_tokens = 0; }, "max_draft_tokens"},
      {[](AdaptiveConfig& c) { c.max_draft_tokens = 32; }, "max_draft_tokens"},
      {[](AdaptiveConfig& c) { c.initial_acceptance = 1.5; }, "initial_acceptance"},
      {[](AdaptiveConfig& c) { c.ema_weight = 0; }, "ema_weight"},
      {[](AdaptiveConfig& c) { c.min_speedup = std::numeric_limits<double>::infinity(); },
       "min_speedup"},
      {[](AdaptiveConfig& c) { c.probe_interval = -1; }, "probe_interval"},
  };
  for (const BadField& bad : cases) {
    AdaptiveConfig config;
    bad.set(config);
    EXPECT_THAT(std::string(config.Validate().message()), HasSubstr(bad.name));
  }
}

TEST(ChooseDraftTokensDeathTest, BadInputsAbort) {
  AdaptiveConfig bad;
  bad.max_draft_tokens = 40;
  EXPECT_DEATH(ChooseDraftTokens(TrackerAt(0.5), kMemoryBound, 0.0, 1, bad), "max_draft_tokens");
  EXPECT_DEATH(ChooseDraftTokens(TrackerAt(0.5), kMemoryBound, -1.0, 1, AdaptiveConfig{}),
               "draft_cost_per_token_s");
}

}  // namespace
}  // namespace duet::spec
