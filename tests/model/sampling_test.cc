#include "common/model/sampling.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace duet {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Logits whose softmax is exactly `probs` (up to float rounding).
std::vector<float> LogitsFor(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

std::vector<float> RandomLogits(int32_t vocab, uint64_t seed, double scale = 3.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (float& x : logits) x = static_cast<float>(normal(rng));
  return logits;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  const double max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p;
  double sum = 0;
  for (float x : logits) {
    p.push_back(std::exp((x - max) / temperature));
    sum += p.back();
  }
  for (double& v : p) v /= sum;
  return p;
}

std::vector<double> LogSoftmax(const std::vector<float>& logits) {
  const double max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) sum += std::exp(x - max);
  std::vector<double> out;
  for (float x : logits) out.push_back(x - max - std::log(sum));
  return out;
}

Sampler MakeSampler(const SamplingParams& params, int32_t vocab) {
  absl::StatusOr<Sampler> sampler = Sampler::Create(params, vocab);
  EXPECT_TRUE(sampler.ok()) << sampler.status();
  return *std::move(sampler);
}

std::vector<int32_t> Tokens(const std::vector<TokenProb>& dist) {
  std::vector<int32_t> out;
  for (const TokenProb& tp : dist) out.push_back(tp.token);
  return out;
}

// Tokens seen when sampling `n` times (empty prompt and history).
std::vector<int32_t> SampleMany(Sampler& sampler, const std::vector<float>& logits, int n) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(sampler.Sample(logits, {}, {}).token);
  return out;
}

// ---- Validation ----

struct BadParam {
  std::function<void(SamplingParams&)> mutate;
  std::string message;
};

TEST(SamplingParamsTest, DefaultsAreValid) { EXPECT_TRUE(SamplingParams{}.Validate(10).ok()); }

TEST(SamplingParamsTest, EveryParameterIsChecked) {
  const std::vector<BadParam> cases = {
      {[](SamplingParams& p) { p.temperature = -1; }, "temperature must be >= 0, got -1"},
      {[](SamplingParams& p) { p.temperature = kInf; }, "temperature must be finite, got inf"},
      {[](SamplingParams& p) { p.temperature = kNaN; }, "temperature must be finite, got nan"},
      {[](SamplingParams& p) { p.top_k = -2; }, "top_k must be >= 0, got -2"},
      {[](SamplingParams& p) { p.top_p = 0; }, "top_p must be in (0, 1], got 0"},
      {[](SamplingParams& p) { p.top_p = 1.5; }, "top_p must be in (0, 1], got 1.5"},
      {[](SamplingParams& p) { p.top_p = kNaN; }, "top_p must be in (0, 1], got nan"},
      {[](SamplingParams& p) { p.min_p = -0.1; }, "min_p must be in [0, 1], got -0.1"},
      {[](SamplingParams& p) { p.min_p = 2; }, "min_p must be in [0, 1], got 2"},
      {[](SamplingParams& p) { p.repetition_penalty = 0; },
       "repetition_penalty must be > 0 and finite, got 0"},
      {[](SamplingParams& p) { p.repetition_penalty = kInf; },
       "repetition_penalty must be > 0 and finite, got inf"},
      {[](SamplingParams& p) { p.frequency_penalty = 2.5; },
       "frequency_penalty must be in [-2, 2], got 2.5"},
      {[](SamplingParams& p) { p.frequency_penalty = -3; },
       "frequency_penalty must be in [-2, 2], got -3"},
      {[](SamplingParams& p) { p.presence_penalty = -2.5; },
       "presence_penalty must be in [-2, 2], got -2.5"},
      {[](SamplingParams& p) { p.top_logprobs = 21; }, "top_logprobs must be in [0, 20], got 21"},
      {[](SamplingParams& p) { p.top_logprobs = -1; }, "top_logprobs must be in [0, 20], got -1"},
      {[](SamplingParams& p) {
         p.stop_token_ids = {3, 10};
       },
       "stop_token_ids[1] must be in [0, 10), got 10"},
      {[](SamplingParams& p) { p.stop_token_ids = {-1}; },
       "stop_token_ids[0] must be in [0, 10), got -1"},
      {[](SamplingParams& p) {
         p.stop_strings = {"ok", ""};
       },
       "stop_strings[1] must be non-empty"},
  };
  for (const BadParam& c : cases) {
    SamplingParams params;
    c.mutate(params);
    const absl::Status status = params.Validate(10);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(status.message(), HasSubstr(c.message));
    absl::StatusOr<Sampler> sampler = Sampler::Create(params, 10);
    EXPECT_EQ(sampler.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
  }
}

TEST(SamplingParamsTest, BoundaryValuesAreValid) {
  SamplingParams params;
  params.temperature = 0;
  params.top_p = 1;
  params.min_p = 1;
  params.frequency_penalty = -2;
  params.presence_penalty = 2;
  params.top_logprobs = kMaxTopLogprobs;
  params.top_k = 1000;  // Larger than the vocab means off.
  params.stop_token_ids = {0, 9};
  EXPECT_TRUE(params.Validate(10).ok());
}

TEST(SamplingParamsTest, RejectsBadVocab) {
  const absl::Status status = SamplingParams{}.Validate(0);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("vocab_size must be > 0, got 0"));
}

// ---- Greedy ----

TEST(ArgMaxTest, LowestIdWinsTiesAndNaNNeverWins) {
  EXPECT_EQ(ArgMax(std::vector<float>{1, 3, 3, 2}), 1);
  EXPECT_EQ(ArgMax(std::vector<float>{kNaN, -5, kNaN, -4}), 3);
  EXPECT_EQ(ArgMax(std::vector<float>{-kInf, -kInf}), 0);
  EXPECT_EQ(ArgMax(std::vector<float>{0, kInf, 1}), 1);
}

TEST(SamplerTest, GreedyIsArgMaxOfPenalizedLogits) {
  SamplingParams params;
  params.temperature = 0;
  params.repetition_penalty = 1.3;
  params.frequency_penalty = 0.4;
  params.presence_penalty = 0.7;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> logits = RandomLogits(500, seed, 1.0);
    std::vector<int32_t> prompt;
    // Penalize the current top few tokens so the penalties must matter.
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    const std::vector<int32_t> generated = {order[0], order[0], order[1]};
    prompt.push_back(order[2]);
    Sampler sampler = MakeSampler(params, 500);
    std::vector<float> penalized = logits;
    sampler.ApplyPenalties(absl::MakeSpan(penalized), prompt, generated);
    EXPECT_EQ(sampler.Sample(logits, prompt, generated).token, ArgMax(penalized));
  }
}

TEST(SamplerTest, PenaltiesChangeTheGreedyChoice) {
  SamplingParams params;
  params.temperature = 0;
  params.presence_penalty = 0.5;
  Sampler sampler = MakeSampler(params, 3);
  const std::vector<float> logits = {2.0f, 1.9f, 0.0f};
  EXPECT_EQ(sampler.Sample(logits, {}, {}).token, 0);
  EXPECT_EQ(sampler.Sample(logits, {}, std::vector<int32_t>{0}).token, 1);
  // Presence counts only generated tokens, so the prompt alone changes nothing.
  EXPECT_EQ(sampler.Sample(logits, std::vector<int32_t>{0}, {}).token, 0);
}

TEST(SamplerTest, TopKOneIsGreedy) {
  SamplingParams params;
  params.top_k = 1;
  params.temperature = 1.5;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    params.seed = seed;
    const std::vector<float> logits = RandomLogits(1000, seed + 100);
    Sampler sampler = MakeSampler(params, 1000);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(sampler.Sample(logits, {}, {}).token, ArgMax(logits));
  }
}

TEST(SamplerTest, NaNLogitIsNeverSampled) {
  SamplingParams params;
  params.seed = 3;
  Sampler sampler = MakeSampler(params, 3);
  const std::vector<float> logits = {0.0f, kNaN, 0.0f};
  for (int32_t token : SampleMany(sampler, logits, 200)) EXPECT_NE(token, 1);
}

TEST(SamplerTest, MaskedTokensAreNeverKept) {
  const std::vector<float> logits = {0.0f, -kInf, 0.0f};
  SamplingParams params;
  EXPECT_THAT(Tokens(MakeSampler(params, 3).Distribution(logits, {}, {})), ElementsAre(0, 2));
  params.top_p = 0.99;
  EXPECT_THAT(Tokens(MakeSampler(params, 3).Distribution(logits, {}, {})), ElementsAre(0, 2));
  params.seed = 5;
  Sampler sampler = MakeSampler(params, 3);
  for (int32_t token : SampleMany(sampler, logits, 200)) EXPECT_NE(token, 1);
}

// ---- Temperature ----

void ExpectFrequenciesMatch(const std::vector<float>& logits, double temperature, uint64_t seed) {
  SamplingParams params;
  params.temperature = temperature;
  params.seed = seed;
  Sampler sampler = MakeSampler(params, static_cast<int32_t>(logits.size()));
  constexpr int kDraws = 40000;
  std::vector<int> counts(logits.size(), 0);
  for (int32_t token : SampleMany(sampler, logits, kDraws)) ++counts[token];
  const std::vector<double> expected = Softmax(logits, temperature);
  for (size_t i = 0; i < logits.size(); ++i) {
    // Standard deviation of a frequency is at most 0.0025 here; allow 4 of them.
    EXPECT_NEAR(static_cast<double>(counts[i]) / kDraws, expected[i], 0.01)
        << "token " << i << " temperature " << temperature;
  }
}

TEST(SamplerTest, FrequenciesFollowTheTemperedSoftmax) {
  const std::vector<float> logits = {1.0f, 0.5f, 0.0f, -1.0f, 0.25f};
  ExpectFrequenciesMatch(logits, 1.0, 1);
  ExpectFrequenciesMatch(logits, 0.5, 2);
  ExpectFrequenciesMatch(logits, 2.0, 3);
}

TEST(SamplerTest, DistributionIsTheTemperedSoftmax) {
  const std::vector<float> logits = {1.0f, 0.5f, 0.0f, -1.0f};
  SamplingParams params;
  params.temperature = 0.7;
  const std::vector<TokenProb> dist = MakeSampler(params, 4).Distribution(logits, {}, {});
  const std::vector<double> expected = Softmax(logits, 0.7);
  ASSERT_EQ(dist.size(), 4u);
  for (const TokenProb& tp : dist) EXPECT_NEAR(tp.prob, expected[tp.token], 1e-6);
  EXPECT_THAT(Tokens(dist), ElementsAre(0, 1, 2, 3));
}

// ---- Filters, on probabilities 0.5, 0.3, 0.1, 0.1 ----

std::vector<int32_t> Kept(const SamplingParams& params) {
  const std::vector<float> logits = LogitsFor({0.5, 0.3, 0.1, 0.1});
  return Tokens(MakeSampler(params, 4).Distribution(logits, {}, {}));
}

TEST(SamplerFilterTest, TopK) {
  SamplingParams params;
  params.top_k = 2;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1));
  params.top_k = 3;  // Tokens 2 and 3 tie; the lower id stays.
  EXPECT_THAT(Kept(params), ElementsAre(0, 1, 2));
  params.top_k = 4;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1, 2, 3));

  // The k-th largest value is tied three ways: the lowest ids of the tie are kept.
  params.top_k = 3;
  EXPECT_THAT(Tokens(MakeSampler(params, 5).Distribution(
                  std::vector<float>{0.0f, 1.0f, 1.0f, 1.0f, 2.0f}, {}, {})),
              ElementsAre(4, 1, 2));

  params.top_k = 2;
  const std::vector<TokenProb> dist =
      MakeSampler(params, 4).Distribution(LogitsFor({0.5, 0.3, 0.1, 0.1}), {}, {});
  EXPECT_NEAR(dist[0].prob, 0.625, 1e-6);
  EXPECT_NEAR(dist[1].prob, 0.375, 1e-6);
}

TEST(SamplerFilterTest, TopP) {
  SamplingParams params;
  params.top_p = 0.8;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1));
  params.top_p = 0.5;
  EXPECT_THAT(Kept(params), ElementsAre(0));
  params.top_p = 0.4;
  EXPECT_THAT(Kept(params), ElementsAre(0));
  params.top_p = 0.79;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1));
  params.top_p = 0.81;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1, 2));
  params.top_p = 0.95;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1, 2, 3));
}

TEST(SamplerFilterTest, TopPUsesTheTopKRenormalizedMass) {
  SamplingParams params;
  params.top_p = 0.85;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1, 2));
  // After top-k 3 the mass is 5/9, 3/9, 1/9: 8/9 already reaches 0.85.
  params.top_k = 3;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1));
}

TEST(SamplerFilterTest, MinP) {
  SamplingParams params;
  params.min_p = 0.25;  // Threshold 0.125.
  EXPECT_THAT(Kept(params), ElementsAre(0, 1));
  params.min_p = 0.7;  // Threshold 0.35.
  EXPECT_THAT(Kept(params), ElementsAre(0));
  params.min_p = 0.1;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1, 2, 3));
  params.min_p = 1.0;
  EXPECT_THAT(Kept(params), ElementsAre(0));
}

TEST(SamplerFilterTest, MinPAppliesAfterTopKAndTopP) {
  SamplingParams params;
  params.top_k = 3;
  params.top_p = 0.95;
  params.min_p = 0.25;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1));
}

TEST(SamplerFilterTest, FiltersUseTemperatureScaledProbabilities) {
  // At temperature 0.5 the probabilities become 25:9:1:1 / 36: top_p 0.9 keeps {0, 1}
  // (25/36 < 0.9 <= 34/36) and 0.6 keeps {0} (at temperature 1 it would keep {0, 1});
  // min_p 0.3 keeps {0, 1} (9/25 = 0.36), min_p 0.4 only {0}.
  SamplingParams params;
  params.temperature = 0.5;
  params.top_p = 0.9;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1));
  params.top_p = 0.6;
  EXPECT_THAT(Kept(params), ElementsAre(0));
  params.top_p = 1.0;
  params.min_p = 0.3;
  EXPECT_THAT(Kept(params), ElementsAre(0, 1));
  params.min_p = 0.4;
  EXPECT_THAT(Kept(params), ElementsAre(0));
}

TEST(SamplerFilterTest, SamplesOnlyKeptTokens) {
  SamplingParams params;
  params.top_p = 0.8;
  params.seed = 11;
  Sampler sampler = MakeSampler(params, 4);
  const std::vector<float> logits = LogitsFor({0.5, 0.3, 0.1, 0.1});
  int zeros = 0;
  for (int32_t token : SampleMany(sampler, logits, 4000)) {
    ASSERT_LT(token, 2);
    zeros += token == 0;
  }
  EXPECT_NEAR(zeros / 4000.0, 0.625, 0.03);
}

// The incremental top-p sort must agree with a full sort on a large, flat vocabulary where
// the kept set spans many chunks.
TEST(SamplerFilterTest, TopPOnLargeVocabMatchesFullSort) {
  constexpr int32_t kVocab = 20000;
  const std::vector<float> logits = RandomLogits(kVocab, 42, 0.5);
  for (double top_p : {0.01, 0.3, 0.9, 0.999}) {
    SamplingParams params;
    params.top_p = top_p;
    const std::vector<int32_t> kept =
        Tokens(MakeSampler(params, kVocab).Distribution(logits, {}, {}));

    const std::vector<double> p = Softmax(logits, 1.0);
    std::vector<int32_t> order(kVocab);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    double mass = 0;
    size_t count = 0;
    while (mass < top_p - 1e-6) mass += p[order[count++]];
    order.resize(count);
    EXPECT_EQ(kept, order) << "top_p " << top_p;
  }
}

TEST(SamplerFilterTest, TopKOnLargeVocabKeepsTheHighestLogits) {
  constexpr int32_t kVocab = 150000;
  const std::vector<float> logits = RandomLogits(kVocab, 7);
  SamplingParams params;
  params.top_k = 50;
  const std::vector<int32_t> kept =
      Tokens(MakeSampler(params, kVocab).Distribution(logits, {}, {}));
  std::vector<int32_t> order(kVocab);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + 50, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  order.resize(50);
  EXPECT_EQ(kept, order);
}

// ---- Penalties ----

TEST(SamplerPenaltyTest, HandComputedValues) {
  SamplingParams params;
  params.repetition_penalty = 2.0;
  params.frequency_penalty = 0.5;
  params.presence_penalty = 0.25;
  Sampler sampler = MakeSampler(params, 6);
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 0.5f, 3.0f, 0.0f};
  const std::vector<int32_t> prompt = {0, 1, 0, 5};
  const std::vector<int32_t> generated = {2, 2, 1, 3};
  sampler.ApplyPenalties(absl::MakeSpan(logits), prompt, generated);
  EXPECT_FLOAT_EQ(logits[0], 1.0f);                  // prompt only: 2 / 2
  EXPECT_FLOAT_EQ(logits[1], -4.0f - 0.5f - 0.25f);  // -2 * 2, once; count 1
  EXPECT_FLOAT_EQ(logits[2], 0.5f - 1.0f - 0.25f);   // 1 / 2 once although seen twice; count 2
  EXPECT_FLOAT_EQ(logits[3], 0.25f - 0.5f - 0.25f);  // 0.5 / 2; count 1
  EXPECT_FLOAT_EQ(logits[4], 3.0f);                  // never seen
  EXPECT_FLOAT_EQ(logits[5], 0.0f);                  // zero stays zero under repetition
}

TEST(SamplerPenaltyTest, NegativePenaltiesEncourage) {
  SamplingParams params;
  params.frequency_penalty = -1.0;
  params.presence_penalty = -0.5;
  Sampler sampler = MakeSampler(params, 3);
  std::vector<float> logits = {0.0f, 0.0f, 0.0f};
  sampler.ApplyPenalties(absl::MakeSpan(logits), std::vector<int32_t>{1},
                         std::vector<int32_t>{2, 2, 2});
  EXPECT_THAT(logits, ElementsAre(0.0f, 0.0f, 3.5f));
}

TEST(SamplerPenaltyTest, DefaultsChangeNothing) {
  Sampler sampler = MakeSampler(SamplingParams{}, 3);
  std::vector<float> logits = {1.0f, -1.0f, 2.0f};
  sampler.ApplyPenalties(absl::MakeSpan(logits), std::vector<int32_t>{0, 1},
                         std::vector<int32_t>{2, 2});
  EXPECT_THAT(logits, ElementsAre(1.0f, -1.0f, 2.0f));
}

TEST(SamplerPenaltyTest, DistributionSeesPenalizedLogits) {
  SamplingParams params;
  params.presence_penalty = std::log(2.0);  // Halves the weight of a generated token.
  const std::vector<float> logits = {0.0f, 0.0f};
  const std::vector<TokenProb> dist =
      MakeSampler(params, 2).Distribution(logits, {}, std::vector<int32_t>{0});
  ASSERT_EQ(dist.size(), 2u);
  EXPECT_EQ(dist[0].token, 1);
  EXPECT_NEAR(dist[0].prob, 2.0 / 3.0, 1e-6);
}

// ---- Seeds ----

// Two samplers made from `params` give the same `run`; one with the next seed does not.
void ExpectSeedDeterminesRun(SamplingParams params, int32_t vocab,
                             const std::function<std::vector<int32_t>(Sampler&)>& run) {
  Sampler a = MakeSampler(params, vocab);
  Sampler b = MakeSampler(params, vocab);
  const std::vector<int32_t> first = run(a);
  EXPECT_EQ(first, run(b));
  params.seed += 1;
  Sampler c = MakeSampler(params, vocab);
  EXPECT_NE(first, run(c));
}

TEST(SamplerTest, SameSeedSameSequence) {
  const std::vector<float> logits = RandomLogits(1000, 5, 1.0);
  SamplingParams params;
  params.seed = 1234;
  params.top_p = 0.95;
  ExpectSeedDeterminesRun(params, 1000, [&](Sampler& s) { return SampleMany(s, logits, 100); });
}

TEST(SamplerTest, CopyContinuesTheSameStream) {
  const std::vector<float> logits = RandomLogits(100, 9, 1.0);
  Sampler a = MakeSampler(SamplingParams{}, 100);
  SampleMany(a, logits, 3);
  Sampler b = a;
  EXPECT_EQ(SampleMany(a, logits, 50), SampleMany(b, logits, 50));
}

// ---- Raw draws (Uniform, Draw) ----

TEST(SamplerDrawTest, UniformIsTheTop53BitsOfTheSeededStream) {
  SamplingParams params;
  params.seed = 99;
  Sampler sampler = MakeSampler(params, 4);
  std::mt19937_64 reference(99);
  for (int i = 0; i < 1000; ++i) {
    const double u = sampler.Uniform();
    EXPECT_EQ(u, static_cast<double>(reference() >> 11) * 0x1.0p-53);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(SamplerDrawTest, UniformDependsOnTheSeedAndCopiesContinueTheStream) {
  SamplingParams params;
  params.seed = 5;
  Sampler a = MakeSampler(params, 4);
  Sampler b = MakeSampler(params, 4);
  params.seed = 6;
  Sampler c = MakeSampler(params, 4);
  const double first = a.Uniform();
  EXPECT_EQ(first, b.Uniform());
  EXPECT_NE(first, c.Uniform());
  Sampler d = a;
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.Uniform(), d.Uniform());
}

std::vector<int32_t> DrawMany(Sampler& sampler, const std::vector<double>& weights, int n) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(sampler.Draw(weights));
  return out;
}

TEST(SamplerDrawTest, DrawIsDeterministicPerSeed) {
  const std::vector<double> weights = {0.5, 1.0, 0.0, 2.0, 0.25};
  SamplingParams params;
  params.seed = 42;
  ExpectSeedDeterminesRun(params, 4, [&](Sampler& s) { return DrawMany(s, weights, 200); });
}

TEST(SamplerDrawTest, DrawUsesExactlyOneUniform) {
  SamplingParams params;
  params.seed = 7;
  Sampler a = MakeSampler(params, 4);
  Sampler b = MakeSampler(params, 4);
  const double u = b.Uniform();
  // Cumulative weights 0.25, 0.5, 0.75, 1: the index is floor(4 u).
  EXPECT_EQ(a.Draw(std::vector<double>{1, 1, 1, 1}), static_cast<int32_t>(u * 4));
  EXPECT_EQ(a.Uniform(), b.Uniform());
}

TEST(SamplerDrawTest, FrequenciesFollowTheWeights) {
  // Unnormalized on purpose; the zero weight is never drawn.
  const std::vector<double> weights = {3.0, 0.0, 1.0, 0.5, 5.5};
  const double total = 10.0;
  SamplingParams params;
  params.seed = 11;
  Sampler sampler = MakeSampler(params, 4);
  constexpr int kDraws = 40000;
  std::vector<int> counts(weights.size(), 0);
  for (int32_t i : DrawMany(sampler, weights, kDraws)) ++counts[i];
  EXPECT_EQ(counts[1], 0);
  for (size_t i = 0; i < weights.size(); ++i) {
    // Standard deviation of a frequency is at most 0.0025 here; allow 4 of them.
    EXPECT_NEAR(static_cast<double>(counts[i]) / kDraws, weights[i] / total, 0.01) << i;
  }
}

TEST(SamplerDrawTest, SinglePositiveWeightIsAlwaysDrawn) {
  Sampler sampler = MakeSampler(SamplingParams{}, 4);
  for (int32_t i : DrawMany(sampler, {0.0, 0.0, 1e-300, 0.0}, 100)) EXPECT_EQ(i, 2);
}

TEST(SamplerDeathTest, DrawRejectsBadWeights) {
  Sampler sampler = MakeSampler(SamplingParams{}, 4);
  EXPECT_DEATH(sampler.Draw(std::vector<double>{1.0, -0.5}), "weights\\[1\\]");
  EXPECT_DEATH(sampler.Draw(std::vector<double>{0.0, 0.0}), "sum");
  EXPECT_DEATH(sampler.Draw(std::vector<double>{}), "sum");
  EXPECT_DEATH(sampler.Draw(std::vector<double>{1.0, std::nan("")}), "weights\\[1\\]");
}

// ---- Logprobs ----

TEST(SamplerLogprobTest, MatchLogSoftmaxOfRawLogits) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, 0.0f};
  const std::vector<double> expected = LogSoftmax(logits);
  SamplingParams params;
  params.temperature = 0;
  params.top_logprobs = 3;
  Sampler sampler = MakeSampler(params, 4);
  const SampleResult result = sampler.Sample(logits, {}, {});
  EXPECT_EQ(result.token, 2);
  EXPECT_NEAR(result.logprob, expected[2], 1e-6);
  ASSERT_EQ(result.top_logprobs.size(), 3u);
  EXPECT_EQ(result.top_logprobs[0].token, 2);
  EXPECT_EQ(result.top_logprobs[1].token, 1);
  EXPECT_EQ(result.top_logprobs[2].token, 0);
  for (const TokenLogprob& t : result.top_logprobs) {
    EXPECT_NEAR(t.logprob, expected[t.token], 1e-6);
  }
}

TEST(SamplerLogprobTest, IgnorePenaltiesAndTemperature) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, 0.0f};
  const std::vector<double> expected = LogSoftmax(logits);
  SamplingParams params;
  params.temperature = 0.3;
  params.presence_penalty = 2.0;
  params.repetition_penalty = 1.5;
  params.top_k = 2;
  params.top_logprobs = 4;
  params.seed = 77;
  Sampler sampler = MakeSampler(params, 4);
  for (int i = 0; i < 20; ++i) {
    const SampleResult result =
        sampler.Sample(logits, std::vector<int32_t>{1}, std::vector<int32_t>{2});
    EXPECT_NEAR(result.logprob, expected[result.token], 1e-6);
    ASSERT_EQ(result.top_logprobs.size(), 4u);
    EXPECT_EQ(result.top_logprobs[0].token, 2);
    EXPECT_NEAR(result.top_logprobs[3].logprob, expected[3], 1e-6);
  }
}

TEST(SamplerLogprobTest, TopLogprobsSortedWithLowerIdOnTies) {
  constexpr int32_t kVocab = 5000;
  std::vector<float> logits = RandomLogits(kVocab, 21);
  logits[4000] = logits[17] = 50.0f;  // A tie at the top.
  SamplingParams params;
  params.top_logprobs = kMaxTopLogprobs;
  Sampler sampler = MakeSampler(params, kVocab);
  const SampleResult result = sampler.Sample(logits, {}, {});
  ASSERT_EQ(result.top_logprobs.size(), static_cast<size_t>(kMaxTopLogprobs));
  EXPECT_EQ(result.top_logprobs[0].token, 17);
  EXPECT_EQ(result.top_logprobs[1].token, 4000);

  std::vector<int32_t> order(kVocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const std::vector<double> expected = LogSoftmax(logits);
  for (int i = 0; i < kMaxTopLogprobs; ++i) {
    EXPECT_EQ(result.top_logprobs[i].token, order[i]) << i;
    EXPECT_NEAR(result.top_logprobs[i].logprob, expected[order[i]], 1e-5) << i;
  }
}

TEST(SamplerLogprobTest, FewerTokensThanRequested) {
  SamplingParams params;
  params.top_logprobs = 5;
  params.temperature = 0;
  Sampler sampler = MakeSampler(params, 3);
  const SampleResult result = sampler.Sample(std::vector<float>{0.0f, 0.0f, 0.0f}, {}, {});
  ASSERT_EQ(result.top_logprobs.size(), 3u);
  EXPECT_EQ(result.top_logprobs[0].token, 0);
  EXPECT_EQ(result.top_logprobs[2].token, 2);
  EXPECT_NEAR(result.logprob, -std::log(3.0), 1e-6);
}

TEST(SamplerLogprobTest, NoneByDefault) {
  Sampler sampler = MakeSampler(SamplingParams{}, 3);
  EXPECT_TRUE(sampler.Sample(std::vector<float>{0.0f, 1.0f, 2.0f}, {}, {}).top_logprobs.empty());
}

// ---- Stop tokens ----

TEST(SamplerTest, IsStopToken) {
  SamplingParams params;
  params.stop_token_ids = {2, 7};
  Sampler sampler = MakeSampler(params, 10);
  EXPECT_TRUE(sampler.IsStopToken(2));
  EXPECT_TRUE(sampler.IsStopToken(7));
  EXPECT_FALSE(sampler.IsStopToken(3));
  EXPECT_FALSE(MakeSampler(SamplingParams{}, 10).IsStopToken(0));
}

// ---- Contract violations ----

TEST(SamplerDeathTest, WrongLogitsSizeAborts) {
  Sampler sampler = MakeSampler(SamplingParams{}, 3);
  EXPECT_DEATH(sampler.Sample(std::vector<float>{0.0f, 1.0f}, {}, {}), "vocab_size 3");
}

TEST(SamplerDeathTest, OutOfRangeHistoryAborts) {
  Sampler sampler = MakeSampler(SamplingParams{}, 3);
  EXPECT_DEATH(sampler.Sample(std::vector<float>{0.0f, 1.0f, 2.0f}, {}, std::vector<int32_t>{3}),
               "generated token id 3");
}

}  // namespace
}  // namespace duet
