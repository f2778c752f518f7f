// Speculative decoding in one process (node/speculator.h over an engine): for each proposer
// (n-gram, a draft model file, the target requantized to Q4_0) greedy outputs are token-identical
// with speculation on and off, on stories260K and a synthetic model, on the CPU and Vulkan
// engines and every KV dtype; sampled outputs keep the target's distribution (chi-square against
// the exact distribution the model gives); the draft model's KV pool is left consistent.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/model/sampling.h"
#include "common/model/synthetic_model.h"
#include "node/batch_generate.h"
#include "node/completion.h"
#include "node/speculator.h"
#include "tests/engine/engine_test_util.h"

namespace duet::testing {
namespace {

using node::Completion;
using node::RequestSampling;
using node::SpeculationOptions;
using node::Speculator;

constexpr int64_t kSlotBlocks = 24;  // blocks per sequence in the test's tables

RequestSampling Greedy(int64_t max_tokens) {
  RequestSampling s;
  s.params.temperature = 0;
  s.max_tokens = max_tokens;
  s.ignore_eos = true;
  return s;
}

// GenerateBatch with this test's block ranges; fails the test on an engine error.
node::BatchGenerateResult Generate(Engine& engine, Speculator* spec,
                                   const std::vector<std::vector<int32_t>>& prompts, int64_t n,
                                   const RequestSampling& sampling) {
  absl::StatusOr<node::BatchGenerateResult> run =
      node::GenerateBatch(engine, spec, prompts, n, sampling, kSlotBlocks);
  EXPECT_TRUE(run.ok()) << run.status();
  return run.ok() ? std::move(*run) : node::BatchGenerateResult{};
}

std::string TempModel(const ModelShape& shape, uint64_t seed) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("duet_spec_draft_" + std::to_string(::getpid()) + "_" +
                             std::to_string(seed) + ".gguf"))
                               .string();
  SyntheticModelOptions options;
  options.shape = shape;
  options.weight_type = GgmlType::kQ8_0;
  options.seed = seed;
  EXPECT_TRUE(WriteSyntheticModel(options, path).ok());
  return path;
}

std::unique_ptr<Speculator> MakeSpeculator(const std::string& method, const std::string& backend,
                                           std::shared_ptr<const GgufFile> file,
                                           const Engine& target, const EngineOptions& options,
                                           const std::string& draft_path = "") {
  SpeculationOptions o;
  o.method = method;
  o.draft_model = draft_path;
  o.adaptive.max_draft_tokens = 5;
  o.adaptive_enabled = false;  // always draft: the test is about correctness
  absl::StatusOr<std::unique_ptr<Speculator>> s =
      Speculator::Create(o, backend, std::move(file), target, options);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

std::vector<std::vector<int32_t>> Prompts(int64_t vocab) {
  return {SeededTokens(9, vocab, 1), SeededTokens(23, vocab, 2), SeededTokens(4, vocab, 3)};
}

class GreedyIdentityTest : public ::testing::TestWithParam<BackendDtype> {};

// stories260K: n-gram, the model itself as a draft file, and its Q4_0 self-draft; a synthetic
// model: n-gram, another (random) synthetic model as the draft, and Q4_0 self-draft.
TEST_P(GreedyIdentityTest, SpeculationOnEqualsOffForEveryProposer) {
  const auto& [backend, dtype] = GetParam();
  if (backend == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  struct Model {
    std::string name;
    std::shared_ptr<const GgufFile> file;
    std::string draft_path;
  };
  std::vector<Model> models;
  if (std::shared_ptr<const GgufFile> stories = Stories260k()) {
    models.push_back({"stories260K", stories, Stories260kPath()});
  }
  const std::string synthetic_draft = TempModel(TinyShape(), 77);
  models.push_back({"synthetic", SyntheticFile(SmallShape(64), GgmlType::kF16, 5), ""});
  // The small shape's draft: a tiny model with the same (built-in) vocab.
  ModelShape draft_shape = TinyShape();
  draft_shape.vocab_size = SmallShape(64).vocab_size;
  models.back().draft_path = TempModel(draft_shape, 78);
  const int64_t n = 32;
  for (const Model& m : models) {
    SCOPED_TRACE(m.name);
    const EngineOptions options = TestOptions(dtype, 3 * kSlotBlocks, 4);
    std::unique_ptr<Engine> engine = MakeEngine(backend, m.file, options);
    ASSERT_NE(engine, nullptr);
    const auto prompts = Prompts(engine->config().vocab_size);
    const node::BatchGenerateResult off = Generate(*engine, nullptr, prompts, n, Greedy(n));
    for (const std::string method : {"ngram", "draft", "self"}) {
      SCOPED_TRACE(method);
      std::unique_ptr<Speculator> spec =
          MakeSpeculator(method, backend, m.file, *engine, options, m.draft_path);
      ASSERT_NE(spec, nullptr);
      const node::BatchGenerateResult on = Generate(*engine, spec.get(), prompts, n, Greedy(n));
      EXPECT_EQ(on.outputs, off.outputs);
      const node::SpeculationStats& stats = spec->stats();
      EXPECT_GT(stats.num_draft_tokens, 0);
      if (m.name == "stories260K" && method == "draft" && dtype == kv::CacheDtype::kF32) {
        // The target drafting for itself (both with exact KV): every draft is accepted.
        EXPECT_EQ(stats.num_accepted_tokens, stats.num_draft_tokens);
      }
      std::cout << m.name << " " << method << ": " << off.steps << " steps off, " << on.steps
                << " on; accepted " << stats.num_accepted_tokens << " of "
                << stats.num_draft_tokens << std::endl;
    }
  }
  std::filesystem::remove(synthetic_draft);
  std::filesystem::remove(models.back().draft_path);
}

INSTANTIATE_TEST_SUITE_P(Backends, GreedyIdentityTest,
                         ::testing::Values(BackendDtype{"cpu", kv::CacheDtype::kF32},
                                           BackendDtype{"vulkan", kv::CacheDtype::kFp8E4M3}),
                         BackendDtypeName);

// Sampled requests: the token a speculative step emits first has exactly the target's
// distribution. Many seeds of one step from the same context on a small model (CPU engine), with
// a draft model that often disagrees, are compared with the distribution the sampler computes
// from the target's logits (chi-square, bins of expected count >= 5 merged). A broken rule --
// keeping every draft -- fails the same bound (checked against the drafts' own frequencies).
TEST(SampledSpeculationTest, FirstTokenKeepsTheTargetDistribution) {
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kF32, 11);
  const EngineOptions options = TestOptions(kv::CacheDtype::kF32, 2 * kSlotBlocks, 2);
  std::unique_ptr<Engine> engine = MakeEngine("cpu", file, options);
  ASSERT_NE(engine, nullptr);
  const int32_t vocab = engine->config().vocab_size;
  ModelShape draft_shape = TinyShape();
  const std::string draft_path = TempModel(draft_shape, 99);  // other weights: disagrees
  std::unique_ptr<Speculator> spec = MakeSpeculator("draft", "cpu", file, *engine, options,
                                                    draft_path);
  ASSERT_NE(spec, nullptr);

  RequestSampling sampling;
  sampling.params.temperature = 1.5;  // spread the mass over many tokens
  sampling.max_tokens = 100;
  sampling.ignore_eos = true;
  const std::vector<int32_t> prompt = SeededTokens(6, vocab, 4);
  const std::vector<int32_t> table = BlockRange(0, kSlotBlocks);
  ASSERT_TRUE(engine->Prefill({table, 0, 0}, prompt).ok());
  // The exact distribution of the first token after the prompt.
  absl::StatusOr<std::vector<float>> logits =
      engine->Verify({table, static_cast<int64_t>(prompt.size()) - 1, 0}, {prompt.back()});
  ASSERT_TRUE(logits.ok());
  ASSERT_TRUE(engine->Commit({table, static_cast<int64_t>(prompt.size()) - 1, 0}, 0).ok());
  // Re-run the last prompt position each trial: the context is prompt[0..n-2], the step's
  // token prompt.back() at position n - 1.
  const int64_t trials = 4000;
  std::vector<int64_t> counts(static_cast<size_t>(vocab), 0);
  std::vector<double> p;
  for (int64_t t = 0; t < trials; ++t) {
    sampling.params.seed = static_cast<uint64_t>(t) * 7919 + 1;
    Completion completion(nullptr, sampling, std::vector<int32_t>(prompt.begin(), prompt.end() - 1),
                          vocab);
    if (t == 0) p = completion.Distribution(*logits, {});
    const Speculator::Item item{static_cast<uint64_t>(t),
                                {table, static_cast<int64_t>(prompt.size()) - 1, 0},
                                prompt.back(),
                                prompt,
                                3,
                                &completion};
    absl::StatusOr<std::optional<std::vector<Speculator::Outcome>>> out =
        spec->Step(*engine, {&item, 1});
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_TRUE(out->has_value());
    const Speculator::Outcome& o = (**out)[0];
    ASSERT_FALSE(o.tokens.empty());
    ++counts[static_cast<size_t>(o.tokens[0])];
    spec->Release(static_cast<uint64_t>(t));
  }
  // The draft model's own (greedy) first draft is one fixed token; its acceptance rate must
  // be strictly between 0 and 1 for the test to exercise both branches of the rule.
  const node::SpeculationStats& stats = spec->stats();
  EXPECT_GT(stats.num_accepted_tokens, 0);
  EXPECT_LT(stats.num_accepted_tokens, stats.num_draft_tokens);

  auto chi_square = [&](const std::vector<int64_t>& observed, int* df) {
    double chi = 0, merged_expected = 0, merged_observed = 0;
    int bins = 0;
    for (int32_t v = 0; v < vocab; ++v) {
      const double e = p[static_cast<size_t>(v)] * static_cast<double>(trials);
      const double o = static_cast<double>(observed[static_cast<size_t>(v)]);
      if (e >= 5) {
        chi += (o - e) * (o - e) / e;
        ++bins;
      } else {
        merged_expected += e;
        merged_observed += o;
      }
    }
    if (merged_expected > 0) {
      chi += (merged_observed - merged_expected) * (merged_observed - merged_expected) /
             merged_expected;
      ++bins;
    }
    *df = bins - 1;
    return chi;
  };
  int df = 0;
  const double chi = chi_square(counts, &df);
  // Wilson-Hilferty approximation of the chi-square quantile at p = 1e-4 (z = 3.719).
  const double z = 3.719;
  const double k = static_cast<double>(df);
  const double bound = k * std::pow(1 - 2 / (9 * k) + z * std::sqrt(2 / (9 * k)), 3);
  EXPECT_LT(chi, bound) << "df " << df;
  // Power: a rule that always keeps the draft emits the draft model's (deterministic) token in
  // every trial; the bound rejects such a point mass (here on the most frequent token).
  std::vector<int64_t> broken = counts;
  const int32_t draft_token = [&] {
    int64_t best = 0;
    int32_t arg = 0;
    for (int32_t v = 0; v < vocab; ++v) {
      if (counts[static_cast<size_t>(v)] > best) best = counts[static_cast<size_t>(v)], arg = v;
    }
    return arg;
  }();
  for (int32_t v = 0; v < vocab; ++v) broken[static_cast<size_t>(v)] = 0;
  broken[static_cast<size_t>(draft_token)] = trials;
  int broken_df = 0;
  EXPECT_GT(chi_square(broken, &broken_df), bound);
  std::filesystem::remove(draft_path);
}

// The draft model's KV: after many sequences draft and are released, no block stays held.
TEST(DraftProposerTest, ReleasedSequencesFreeTheirDraftBlocks) {
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kF32, 3);
  const EngineOptions options = TestOptions(kv::CacheDtype::kF32, 3 * kSlotBlocks, 4);
  std::unique_ptr<Engine> target = MakeEngine("cpu", file, options);
  std::unique_ptr<Engine> draft_engine = MakeEngine("cpu", file, options);
  ASSERT_NE(target, nullptr);
  absl::StatusOr<std::unique_ptr<spec::DraftModelProposer>> proposer =
      spec::DraftModelProposer::Create(std::move(draft_engine), target->config().vocab_size,
                                       "draft");
  ASSERT_TRUE(proposer.ok());
  const int32_t vocab = target->config().vocab_size;
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<int32_t>> contexts = {SeededTokens(40, vocab, 5 + round),
                                                  SeededTokens(7, vocab, 9 + round)};
    std::vector<spec::ProposeRequest> batch = {{1, contexts[0], 4}, {2, contexts[1], 2}};
    absl::StatusOr<std::vector<std::vector<int32_t>>> drafts = (*proposer)->Propose(batch);
    ASSERT_TRUE(drafts.ok()) << drafts.status();
    EXPECT_EQ((*drafts)[0].size(), 4u);
    EXPECT_EQ((*drafts)[1].size(), 2u);
    // A rolled-back context (the target rejected drafts) drafts the same as a fresh one.
    contexts[0].resize(30);
    batch[0].context = contexts[0];
    absl::StatusOr<std::vector<std::vector<int32_t>>> again = (*proposer)->Propose(batch);
    ASSERT_TRUE(again.ok());
    (*proposer)->Release(1);
    absl::StatusOr<std::vector<std::vector<int32_t>>> fresh = (*proposer)->Propose(batch);
    ASSERT_TRUE(fresh.ok());
    EXPECT_EQ((*again)[0], (*fresh)[0]);
    EXPECT_GT((*proposer)->num_used_blocks(), 0);
    (*proposer)->Release(1);
    (*proposer)->Release(2);
    EXPECT_EQ((*proposer)->num_used_blocks(), 0);
    EXPECT_EQ((*proposer)->num_sequences(), 0);
  }
}

TEST(SpeculatorOptionsTest, BadOptionsAreNamed) {
  SpeculationOptions o;
  o.method = "magic";
  EXPECT_NE(o.Validate().message().find("off, ngram, draft or self"), std::string::npos);
  o.method = "draft";
  EXPECT_NE(o.Validate().message().find("draft model file"), std::string::npos);
  o.method = "ngram";
  o.adaptive.max_draft_tokens = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kF32, 3);
  const EngineOptions options = TestOptions(kv::CacheDtype::kF32);
  std::unique_ptr<Engine> engine = MakeEngine("cpu", file, options);
  SpeculationOptions draft;
  draft.method = "draft";
  draft.draft_model = "/nonexistent/draft.gguf";
  absl::StatusOr<std::unique_ptr<Speculator>> s =
      Speculator::Create(draft, "cpu", file, *engine, options);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("draft model"), std::string::npos) << s.status();
  // A draft with another vocab.
  ModelShape other = TinyShape();
  other.vocab_size = TinyShape().vocab_size + 40;
  draft.draft_model = TempModel(other, 5);
  s = Speculator::Create(draft, "cpu", file, *engine, options);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("vocab"), std::string::npos) << s.status();
  std::filesystem::remove(draft.draft_model);
}

}  // namespace
}  // namespace duet::testing
