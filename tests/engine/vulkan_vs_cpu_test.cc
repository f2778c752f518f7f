// Whole-model logits of the Vulkan engine against the CPU engine (the oracle) on synthetic
// models: every weight type (F32, F16, Q8_0, Q4_0) x KV dtype (F32, F16, FP8) x shape (tiny,
// head_dim 64 and 128 with GQA), and a qwen2 variant of tiny (qkv biases, NeoX RoPE). One scenario
// per case drives both engines through the same calls with the same tokens:
//   - sequence A: a 43-token prompt in one chunk (all logits);
//   - sequence B: the same prompt in chunks of 16, 5, 22 (all logits; equal to A's within the
//     backend's own tolerance, and A's and B's K/V then live in different blocks);
//   - 2 decode steps of A and B together; a Verify of A over k = 3 drafts that crosses a block
//     boundary; Commit of 2 of the 4 positions; 2 more decode steps (sealing a block in FP8);
//   - sequence C: 10 greedy steps (DecodeStepGreedy) from a 5-token prompt.
// Tolerance (docs/numerics.md): |vulkan - cpu| <= atol + rtol * max|cpu| over each call's
// logits, with (atol, rtol) = (2e-3, 2e-3) for F32/F16 KV and (2e-2, 1e-2) for FP8 KV, where a
// last-bit difference before quantization can move a value by one FP8 step (1/16 relative).
// Greedy tokens must be identical, except at near-ties (CPU top-2 margin under the tolerance),
// which the test reports and stops comparing at.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/engine.h"
#include "tests/engine/engine_test_util.h"

namespace duet::testing {
namespace {

struct Tolerance {
  float atol;
  float rtol;
};

Tolerance ToleranceFor(kv::CacheDtype dtype) {
  return dtype == kv::CacheDtype::kFp8E4M3 ? Tolerance{2e-2f, 1e-2f} : Tolerance{2e-3f, 2e-3f};
}

// Deterministic token ids in [3, vocab) (no control tokens).
std::vector<int32_t> Tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::vector<int32_t> t;
  uint32_t x = seed * 2654435761u + 12345u;
  for (int64_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    t.push_back(static_cast<int32_t>(3 + (x >> 8) % static_cast<uint32_t>(vocab - 3)));
  }
  return t;
}

// Everything a scenario returns: the logits of each call, and C's greedy tokens.
struct ScenarioResult {
  std::vector<std::string> names;
  std::vector<std::vector<float>> logits;
  std::vector<int32_t> greedy;
};

void RunScenario(Engine& engine, ScenarioResult* out) {
  const int64_t vocab = engine.config().vocab_size;
  const std::vector<int32_t> table_a = BlockRange(0, 8);
  const std::vector<int32_t> table_b = BlockRange(8, 8);
  const std::vector<int32_t> table_c = BlockRange(16, 8);
  const std::vector<int32_t> prompt = Tokens(43, vocab, 1);
  auto record = [&](const std::string& name, absl::StatusOr<std::vector<float>> logits) {
    ASSERT_TRUE(logits.ok()) << name << ": " << logits.status();
    out->names.push_back(name);
    out->logits.push_back(std::move(*logits));
  };

  record("prefill A", engine.Prefill({table_a, 0, 0}, prompt, /*all_logits=*/true));
  std::vector<float> chunked;
  int64_t cached = 0;
  for (int64_t n : {16, 5, 22}) {
    absl::StatusOr<std::vector<float>> part = engine.Prefill(
        {table_b, cached, 1},
        absl::MakeConstSpan(prompt).subspan(static_cast<size_t>(cached), static_cast<size_t>(n)),
        /*all_logits=*/true);
    ASSERT_TRUE(part.ok()) << part.status();
    chunked.insert(chunked.end(), part->begin(), part->end());
    cached += n;
  }
  record("prefill B (chunked)", chunked);

  const std::vector<int32_t> feed = Tokens(8, vocab, 2);
  int64_t a = 43;
  int64_t b = 43;
  for (int step = 0; step < 2; ++step) {
    const DecodeItem items[] = {{{table_a, a, 0}, feed[step]}, {{table_b, b, 1}, feed[step + 2]}};
    record(absl::StrCat("decode ", step), engine.DecodeStep(items));
    ++a;
    ++b;
  }
  // A at 45: Verify positions 45..48 (48 starts block 3).
  const std::vector<int32_t> draft = {feed[4], feed[5], feed[6], feed[7]};
  record("verify A", engine.Verify({table_a, a, 0}, draft));
  ASSERT_TRUE(engine.Commit({table_a, a, 0}, 2).ok());
  a += 2;
  for (int step = 0; step < 2; ++step) {
    // A at 47 then 48: the second step completes block 2 (sealed in FP8).
    const DecodeItem items[] = {{{table_b, b, 1}, feed[step]}, {{table_a, a, 0}, feed[step + 1]}};
    record(absl::StrCat("decode after verify ", step), engine.DecodeStep(items));
    ++a;
    ++b;
  }

  const std::vector<int32_t> prompt_c = Tokens(5, vocab, 3);
  absl::StatusOr<std::vector<float>> logits_c = engine.Prefill({table_c, 0, 2}, prompt_c);
  ASSERT_TRUE(logits_c.ok()) << logits_c.status();
  record("prefill C", *logits_c);
  int32_t token = ArgMaxRows(*logits_c, vocab)[0];
  int64_t c = 5;
  for (int step = 0; step < 10; ++step) {
    out->greedy.push_back(token);
    const DecodeItem item{{table_c, c, 2}, token};
    absl::StatusOr<std::vector<int32_t>> next = engine.DecodeStepGreedy({&item, 1});
    ASSERT_TRUE(next.ok()) << next.status();
    token = (*next)[0];
    ++c;
  }
  out->greedy.push_back(token);
}

using Case = std::tuple<std::string, GgmlType, kv::CacheDtype>;

class VulkanVsCpuTest : public ::testing::TestWithParam<Case> {};

ModelShape ShapeByName(const std::string& name) {
  if (name == "tiny") return TinyShape();
  if (name == "qwen2") {  // qkv biases, NeoX RoPE
    ModelShape shape = TinyShape();
    shape.name = "tiny-qwen2";
    shape.architecture = Architecture::kQwen2;
    shape.qkv_bias = true;
    return shape;
  }
  return SmallShape(name == "hd64" ? 64 : 128);
}

TEST_P(VulkanVsCpuTest, LogitsAndGreedyTokensMatch) {
  if (!HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  const auto& [shape_name, weight_type, kv_dtype] = GetParam();
  std::shared_ptr<const GgufFile> file = SyntheticFile(ShapeByName(shape_name), weight_type, 7);
  ASSERT_NE(file, nullptr);
  const EngineOptions options = TestOptions(kv_dtype, 32, 4);
  std::unique_ptr<Engine> cpu = MakeEngine("cpu", file, options);
  std::unique_ptr<Engine> gpu = MakeEngine("vulkan", file, options);
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  ScenarioResult want;
  ScenarioResult got;
  ASSERT_NO_FATAL_FAILURE(RunScenario(*cpu, &want));
  ASSERT_NO_FATAL_FAILURE(RunScenario(*gpu, &got));
  ASSERT_EQ(got.logits.size(), want.logits.size());

  const Tolerance tol = ToleranceFor(kv_dtype);
  const int64_t vocab = cpu->config().vocab_size;
  float worst = 0;
  for (size_t i = 0; i < want.logits.size(); ++i) {
    EXPECT_TRUE(LogitsNear(got.logits[i], want.logits[i], tol.atol, tol.rtol)) << want.names[i];
    worst = std::max(worst, Compare(got.logits[i], want.logits[i]).max_abs);
    // Greedy choice of every row, unless the CPU's top two are closer than the error bound.
    const std::vector<int32_t> g = ArgMaxRows(got.logits[i], vocab);
    const std::vector<int32_t> w = ArgMaxRows(want.logits[i], vocab);
    for (size_t r = 0; r < w.size(); ++r) {
      const float margin =
          TopTwoMargin(absl::MakeConstSpan(want.logits[i])
                           .subspan(r * static_cast<size_t>(vocab), static_cast<size_t>(vocab)));
      if (margin > 2 * tol.atol) {
        EXPECT_EQ(g[r], w[r]) << want.names[i] << " row " << r;
      }
    }
  }
  // The chunked prefill of B equals A's one-chunk prefill within the tolerance, on each backend.
  EXPECT_TRUE(LogitsNear(got.logits[1], got.logits[0], tol.atol, tol.rtol));
  EXPECT_EQ(want.logits[1], want.logits[0]);  // CPU: rows are computed independently
  EXPECT_EQ(got.greedy, want.greedy);
  RecordProperty("max_abs_logit_error", std::to_string(worst));
  std::printf("[%s %s kv=%s] max |vulkan - cpu| = %.3g\n", shape_name.c_str(),
              std::string(GgmlTypeName(weight_type)).c_str(),
              std::string(kv::CacheDtypeName(kv_dtype)).c_str(), worst);
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const auto& [shape_name, weight_type, kv_dtype] = info.param;
  return absl::StrCat(shape_name, "_", std::string(GgmlTypeName(weight_type)), "_kv",
                      std::string(kv::CacheDtypeName(kv_dtype)));
}

INSTANTIATE_TEST_SUITE_P(AllTypes, VulkanVsCpuTest,
                         ::testing::Combine(::testing::Values("tiny", "hd64", "hd128"),
                                            ::testing::Values(GgmlType::kF32, GgmlType::kF16,
                                                              GgmlType::kQ8_0, GgmlType::kQ4_0),
                                            ::testing::Values(kv::CacheDtype::kF32,
                                                              kv::CacheDtype::kF16,
                                                              kv::CacheDtype::kFp8E4M3)),
                         CaseName);

// The qwen2 architecture (biases added per row on the device, NeoX rotation).
INSTANTIATE_TEST_SUITE_P(Qwen2, VulkanVsCpuTest,
                         ::testing::Values(Case{"qwen2", GgmlType::kF16, kv::CacheDtype::kF16},
                                           Case{"qwen2", GgmlType::kQ8_0,
                                                kv::CacheDtype::kFp8E4M3}),
                         CaseName);

}  // namespace
}  // namespace duet::testing
