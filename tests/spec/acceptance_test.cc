// Tests of speculative acceptance: hand-checked greedy verdicts, and a chi-square test that the
// sampled rule emits exactly the target's distribution (with a check that the test would catch
// a wrong rule).
#include "common/spec/acceptance.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "common/model/sampling.h"

namespace duet::spec {
namespace {

using Dist = std::vector<double>;

Sampler MakeSampler(uint64_t seed, int32_t vocab) {
  SamplingParams params;
  params.seed = seed;
  absl::StatusOr<Sampler> sampler = Sampler::Create(params, vocab);
  EXPECT_TRUE(sampler.ok()) << sampler.status();
  return *std::move(sampler);
}

// ---- Greedy ----

TEST(AcceptGreedyTest, AllAcceptedEmitsTheBonusToken) {
  const Verdict v = AcceptGreedy(std::vector<int32_t>{5, 6, 7}, std::vector<int32_t>{5, 6, 7, 8});
  EXPECT_EQ(v.num_accepted, 3);
  EXPECT_EQ(v.next_token, 8);
}

TEST(AcceptGreedyTest, FirstRejectedEmitsTheCorrection) {
  const Verdict v = AcceptGreedy(std::vector<int32_t>{5, 6, 7}, std::vector<int32_t>{9, 6, 7, 8});
  EXPECT_EQ(v.num_accepted, 0);
  EXPECT_EQ(v.next_token, 9);
}

TEST(AcceptGreedyTest, StopsAtTheFirstMismatchEvenIfLaterOnesAgree) {
  const Verdict v =
      AcceptGreedy(std::vector<int32_t>{5, 6, 7, 8}, std::vector<int32_t>{5, 6, 1, 8, 2});
  EXPECT_EQ(v.num_accepted, 2);
  EXPECT_EQ(v.next_token, 1);
}

TEST(AcceptGreedyTest, NoDraftsIsOrdinaryDecoding) {
  const Verdict v = AcceptGreedy({}, std::vector<int32_t>{4});
  EXPECT_EQ(v.num_accepted, 0);
  EXPECT_EQ(v.next_token, 4);
}

TEST(AcceptGreedyDeathTest, WrongTargetCountAborts) {
  EXPECT_DEATH(AcceptGreedy(std::vector<int32_t>{1, 2}, std::vector<int32_t>{1, 2}),
               "target_tokens.size\\(\\) 2");
}

// ---- Sampled: deterministic cases ----

TEST(AcceptSampledTest, OneHotTargetsAgreeWithGreedy) {
  // Temperature 0: p_i is a point mass on the greedy token, and the rule keeps exactly the
  // greedy prefix whatever the RNG says.
  const std::vector<int32_t> drafts = {1, 2, 3};
  const std::vector<int32_t> greedy = {1, 2, 0, 3};
  std::vector<Dist> p;
  for (int32_t t : greedy) {
    Dist d(4, 0.0);
    d[static_cast<size_t>(t)] = 1.0;
    p.push_back(d);
  }
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Sampler rng = MakeSampler(seed, 4);
    const Verdict v = AcceptSampled(drafts, p, {}, rng);
    const Verdict g = AcceptGreedy(drafts, greedy);
    EXPECT_EQ(v.num_accepted, g.num_accepted);
    EXPECT_EQ(v.next_token, g.next_token);
  }
}

TEST(AcceptSampledTest, DraftFromTheTargetItselfIsAlwaysAccepted) {
  const Dist p = {0.1, 0.2, 0.3, 0.4};
  Sampler rng = MakeSampler(3, 4);
  for (int32_t x = 0; x < 4; ++x) {
    const Verdict v = AcceptSampled(std::vector<int32_t>{x, x}, std::vector<Dist>{p, p, p},
                                    std::vector<Dist>{p, p}, rng);
    EXPECT_EQ(v.num_accepted, 2);
  }
}

TEST(AcceptSampledTest, ImpossibleDraftIsRejectedAndCorrectedFromTheResidual) {
  // p(2) = 0: draft 2 is always rejected; with a point-mass q the residual is p itself.
  const Dist p0 = {0.5, 0.5, 0.0, 0.0};
  const Dist p1 = {0.0, 0.0, 0.0, 1.0};
  Sampler rng = MakeSampler(5, 4);
  for (int i = 0; i < 100; ++i) {
    const Verdict v = AcceptSampled(std::vector<int32_t>{2}, std::vector<Dist>{p0, p1}, {}, rng);
    EXPECT_EQ(v.num_accepted, 0);
    EXPECT_TRUE(v.next_token == 0 || v.next_token == 1) << v.next_token;
  }
}

TEST(AcceptSampledTest, SameSeedSameVerdicts) {
  const std::vector<Dist> p = {{0.3, 0.3, 0.4}, {0.5, 0.25, 0.25}, {0.2, 0.2, 0.6}};
  const std::vector<Dist> q = {{0.6, 0.2, 0.2}, {0.1, 0.1, 0.8}};
  const std::vector<int32_t> drafts = {0, 2};
  Sampler a = MakeSampler(9, 3);
  Sampler b = MakeSampler(9, 3);
  for (int i = 0; i < 100; ++i) {
    const Verdict va = AcceptSampled(drafts, p, q, a);
    const Verdict vb = AcceptSampled(drafts, p, q, b);
    EXPECT_EQ(va.num_accepted, vb.num_accepted);
    EXPECT_EQ(va.next_token, vb.next_token);
  }
}

TEST(AcceptSampledDeathTest, MismatchedShapesAbort) {
  const Dist p = {0.5, 0.5};
  Sampler rng = MakeSampler(1, 2);
  EXPECT_DEATH(AcceptSampled(std::vector<int32_t>{0}, std::vector<Dist>{p}, {}, rng),
               "target_probs.size\\(\\) 1");
  EXPECT_DEATH(
      AcceptSampled(std::vector<int32_t>{0}, std::vector<Dist>{p, p}, std::vector<Dist>{p, p}, rng),
      "draft_probs.size\\(\\) 2");
  EXPECT_DEATH(AcceptSampled(std::vector<int32_t>{0}, std::vector<Dist>{p, Dist{1.0}}, {}, rng),
               "target_probs\\[1\\] has 1");
  EXPECT_DEATH(AcceptSampled(std::vector<int32_t>{2}, std::vector<Dist>{p, p}, {}, rng),
               "drafts\\[0\\] = 2");
}

TEST(DensifyTest, SparseToDense) {
  const std::vector<TokenProb> sparse = {{3, 0.5}, {0, 0.25}, {3, 0.125}};
  EXPECT_EQ(Densify(sparse, 5), (Dist{0.25, 0.0, 0.0, 0.625, 0.0}));
  EXPECT_EQ(Densify({}, 2), (Dist{0.0, 0.0}));
}

TEST(DensifyTest, MatchesSamplerDistribution) {
  SamplingParams params;
  params.temperature = 0.8;
  params.top_k = 3;
  absl::StatusOr<Sampler> sampler = Sampler::Create(params, 6);
  ASSERT_TRUE(sampler.ok());
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.5f, 0.7f, 0.0f};
  const Dist dense = Densify(sampler->Distribution(logits, {}, {}), 6);
  double total = 0;
  for (double x : dense) total += x;
  EXPECT_NEAR(total, 1.0, 1e-12);
  EXPECT_GT(dense[1], dense[3]);
  EXPECT_GT(dense[3], dense[4]);
  EXPECT_EQ(dense[0], 0.0);
  EXPECT_EQ(dense[2], 0.0);
  EXPECT_EQ(dense[5], 0.0);
}

TEST(DensifyDeathTest, OutOfRangeTokenAborts) {
  EXPECT_DEATH(Densify(std::vector<TokenProb>{{4, 1.0}}, 4), "token 4 outside");
}

// ---- Sampled: the rule is lossless (statistical) ----
//
// The target's distributions here do not depend on the tokens before them, so decoding with
// the target alone would emit p_0 x p_1 x ... . Speculation must emit the same: the kept
// drafts, then next_token, then (to fill the window when drafts were rejected) what the target
// samples at the later positions on its own.

// Upper 1e-4 quantiles of the chi-square distribution with `df` degrees of freedom, computed
// with mpmath: findroot(gammainc(df/2, x/2, inf, regularized=True) - 1e-4, df + 10).
double ChiSquareQuantile(int df) {
  switch (df) {
    case 3:
      return 21.107513;
    case 4:
      return 23.512742;
    case 5:
      return 25.744832;
    case 29:
      return 66.151685;
    case 35:
      return 74.926222;
    case 63:
      return 113.50499;
    default:
      ADD_FAILURE() << "no tabulated quantile for df " << df;
      return 0;
  }
}

// Pearson's statistic of `counts` (n draws) against `expected` probabilities and its degrees of
// freedom. A count in a category of probability 0 makes the statistic infinite.
struct ChiSquare {
  double statistic = 0;
  int df = -1;
};

ChiSquare Pearson(const std::vector<int64_t>& counts, const Dist& expected, int64_t n) {
  ChiSquare result;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = expected[i] * static_cast<double>(n);
    if (e == 0) {
      if (counts[i] > 0) result.statistic = std::numeric_limits<double>::infinity();
      continue;
    }
    const double d = static_cast<double>(counts[i]) - e;
    result.statistic += d * d / e;
    ++result.df;
  }
  return result;
}

// Seeded random distribution over `vocab` tokens with weights in [0.2, 1), and token
// `zero_at` (when >= 0) given probability 0.
Dist RandomDist(std::mt19937_64& rng, int32_t vocab, int32_t zero_at = -1) {
  std::uniform_real_distribution<double> weight(0.2, 1.0);
  Dist d(static_cast<size_t>(vocab));
  double total = 0;
  for (int32_t t = 0; t < vocab; ++t) {
    d[static_cast<size_t>(t)] = t == zero_at ? 0.0 : weight(rng);
    total += d[static_cast<size_t>(t)];
  }
  for (double& x : d) x /= total;
  return d;
}

enum class Rule {
  kLossless,          // AcceptSampled.
  kAlwaysAccept,      // Wrong: keeps every draft (emits q, not p).
  kRejectDrawsFromP,  // Wrong: a rejection draws from p instead of the residual.
};

struct SpecSetup {
  std::vector<Dist> p;      // [k + 1]
  std::vector<Dist> q;      // [k]: what the drafts are sampled from.
  bool point_mass = false;  // Pass no draft_probs (q_i is treated as a point mass).
};

Verdict WrongAccept(Rule rule, const std::vector<int32_t>& drafts, const SpecSetup& s,
                    Sampler& rng) {
  for (size_t i = 0; i < drafts.size(); ++i) {
    if (rule == Rule::kAlwaysAccept) continue;
    const size_t x = static_cast<size_t>(drafts[i]);
    const double q_x = s.point_mass ? 1.0 : s.q[i][x];
    if (rng.Uniform() * q_x < s.p[i][x]) continue;
    return Verdict{static_cast<int64_t>(i), rng.Draw(s.p[i])};
  }
  return Verdict{static_cast<int64_t>(drafts.size()), rng.Draw(s.p.back())};
}

// The first k + 1 tokens emitted in one trial, as a base-vocab number (token 0 most
// significant), plus the first token alone.
struct Emitted {
  int64_t tuple = 0;
  int32_t first = 0;
};

Emitted EmitOnce(const SpecSetup& s, Rule rule, Sampler& drafter, Sampler& target) {
  std::vector<int32_t> drafts;
  for (const Dist& q : s.q) drafts.push_back(drafter.Draw(q));
  const Verdict v =
      rule == Rule::kLossless
          ? AcceptSampled(drafts, s.p, s.point_mass ? std::vector<Dist>{} : s.q, target)
          : WrongAccept(rule, drafts, s, target);
  std::vector<int32_t> out(drafts.begin(), drafts.begin() + v.num_accepted);
  out.push_back(v.next_token);
  while (out.size() < s.p.size()) out.push_back(target.Draw(s.p[out.size()]));
  Emitted e;
  e.first = out[0];
  for (int32_t t : out) e.tuple = e.tuple * static_cast<int64_t>(s.p[0].size()) + t;
  return e;
}

struct Statistics {
  ChiSquare first;  // Of the first emitted token against p_0.
  ChiSquare tuple;  // Of the first k + 1 emitted tokens against p_0 x ... x p_k.
};

Statistics RunTrials(const SpecSetup& s, Rule rule, int64_t trials, uint64_t seed) {
  const int32_t vocab = static_cast<int32_t>(s.p[0].size());
  Sampler drafter = MakeSampler(seed, vocab);
  Sampler target = MakeSampler(seed ^ 0x9e3779b97f4a7c15ULL, vocab);
  int64_t num_tuples = 1;
  for (size_t i = 0; i < s.p.size(); ++i) num_tuples *= vocab;
  std::vector<int64_t> first_counts(static_cast<size_t>(vocab), 0);
  std::vector<int64_t> tuple_counts(static_cast<size_t>(num_tuples), 0);
  for (int64_t i = 0; i < trials; ++i) {
    const Emitted e = EmitOnce(s, rule, drafter, target);
    ++first_counts[static_cast<size_t>(e.first)];
    ++tuple_counts[static_cast<size_t>(e.tuple)];
  }
  // The exact target distribution of the tuple: the product of the positions' p.
  Dist tuple_probs(static_cast<size_t>(num_tuples));
  for (int64_t code = 0; code < num_tuples; ++code) {
    double prob = 1;
    int64_t rest = code;
    for (size_t j = s.p.size(); j-- > 0;) {
      prob *= s.p[j][static_cast<size_t>(rest % vocab)];
      rest /= vocab;
    }
    tuple_probs[static_cast<size_t>(code)] = prob;
  }
  return {Pearson(first_counts, s.p[0], trials), Pearson(tuple_counts, tuple_probs, trials)};
}

constexpr int64_t kTrials = 200000;

// One draft over a vocab of 6: p_0 forbids token 5 (which q_0 may draft), q_0 never drafts
// token 0 (so that token only comes from corrections).
SpecSetup OneDraftSetup(bool point_mass) {
  std::mt19937_64 rng(2024);
  SpecSetup s;
  s.p = {RandomDist(rng, 6, /*zero_at=*/5), RandomDist(rng, 6)};
  s.q = {RandomDist(rng, 6, /*zero_at=*/0)};
  s.point_mass = point_mass;
  return s;
}

void ExpectLossless(const Statistics& stats) {
  EXPECT_LT(stats.first.statistic, ChiSquareQuantile(stats.first.df)) << "df " << stats.first.df;
  EXPECT_LT(stats.tuple.statistic, ChiSquareQuantile(stats.tuple.df)) << "df " << stats.tuple.df;
}

TEST(AcceptSampledLosslessTest, SampledDraftsEmitTheTargetDistribution) {
  const Statistics stats = RunTrials(OneDraftSetup(false), Rule::kLossless, kTrials, 1);
  EXPECT_EQ(stats.first.df, 4);   // 5 possible first tokens.
  EXPECT_EQ(stats.tuple.df, 29);  // 5 x 6 pairs.
  ExpectLossless(stats);
}

TEST(AcceptSampledLosslessTest, PointMassDraftsEmitTheTargetDistribution) {
  // The same drafts, but verified as deterministic choices (no draft_probs): lossless for
  // every draft, so also for drafts picked at random.
  ExpectLossless(RunTrials(OneDraftSetup(true), Rule::kLossless, kTrials, 2));
}

// Two drafts over a vocab of 4, every probability positive.
SpecSetup TwoDraftSetup() {
  std::mt19937_64 rng(77);
  SpecSetup s;
  for (int i = 0; i < 3; ++i) s.p.push_back(RandomDist(rng, 4));
  for (int i = 0; i < 2; ++i) s.q.push_back(RandomDist(rng, 4));
  return s;
}

TEST(AcceptSampledLosslessTest, TwoDraftsEmitTheTargetDistribution) {
  SpecSetup s = TwoDraftSetup();
  const Statistics stats = RunTrials(s, Rule::kLossless, kTrials, 3);
  EXPECT_EQ(stats.tuple.df, 63);  // 4^3 triples.
  ExpectLossless(stats);
  s.point_mass = true;
  ExpectLossless(RunTrials(s, Rule::kLossless, kTrials, 4));
}

TEST(AcceptSampledLosslessTest, TheTestRejectsWrongRules) {
  // Power: the same statistics at the same thresholds flag rules that are not lossless.
  for (bool point_mass : {false, true}) {
    const SpecSetup s = OneDraftSetup(point_mass);
    const Statistics always = RunTrials(s, Rule::kAlwaysAccept, kTrials, 5);
    EXPECT_GT(always.first.statistic, ChiSquareQuantile(4)) << "point_mass " << point_mass;
    EXPECT_GT(always.tuple.statistic, ChiSquareQuantile(29)) << "point_mass " << point_mass;
    const Statistics from_p = RunTrials(s, Rule::kRejectDrawsFromP, kTrials, 6);
    EXPECT_GT(from_p.first.statistic, ChiSquareQuantile(4)) << "point_mass " << point_mass;
    EXPECT_GT(from_p.tuple.statistic, ChiSquareQuantile(29)) << "point_mass " << point_mass;
  }
  // Where every token is possible (finite statistics), too.
  const SpecSetup two = TwoDraftSetup();
  EXPECT_GT(RunTrials(two, Rule::kAlwaysAccept, kTrials, 7).tuple.statistic, ChiSquareQuantile(63));
  EXPECT_GT(RunTrials(two, Rule::kRejectDrawsFromP, kTrials, 8).tuple.statistic,
            ChiSquareQuantile(63));
}

}  // namespace
}  // namespace duet::spec
