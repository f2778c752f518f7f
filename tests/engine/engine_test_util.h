// Shared helpers for the engine tests: synthetic models built in memory, engines of either
// backend (Vulkan tests skip when no device exists), block tables, and logits comparisons.
#ifndef DUET_TESTS_ENGINE_ENGINE_TEST_UTIL_H_
#define DUET_TESTS_ENGINE_ENGINE_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/types/span.h"
#include "common/engine/engine.h"
#include "common/kv/paged_kv.h"
#include "common/model/ggml_types.h"
#include "common/model/gguf.h"
#include "common/model/shapes.h"

namespace duet::testing {

// The "tiny" shape (64 hidden, 2 layers, 4/2 heads, head_dim 16).
ModelShape TinyShape();
// A small llama with the given head_dim (64 or 128): 128 hidden, q_dim 512 (8 or 4 heads),
// grouped-query attention (num_heads / 2 KV heads), ffn 128, 2 layers, the built-in 260-token
// vocab and a 256-position context.
ModelShape SmallShape(int64_t head_dim);

// A synthetic model of `shape` with every 2-D weight in `type`, parsed in memory (the bytes
// live as long as the file).
std::shared_ptr<const GgufFile> SyntheticFile(const ModelShape& shape, GgmlType type,
                                              uint64_t seed);

// ../shared/models/stories260K.gguf, or null when absent.
std::shared_ptr<const GgufFile> Stories260k();
std::string Stories260kPath();

// Whether a Vulkan device exists (the reason is printed once when not).
bool HaveVulkan();

// Engine options for tests: a small pool.
EngineOptions TestOptions(kv::CacheDtype dtype, int64_t num_blocks = 64, int64_t max_sequences = 8);

// Crashes (fails the test) when creation fails.
std::unique_ptr<Engine> MakeEngine(const std::string& backend, std::shared_ptr<const GgufFile> file,
                                   const EngineOptions& options);

// MakeEngine for "cpu", "vulkan", or "vulkan_staged": the Vulkan engine copying KV through
// its staging buffer even on unified memory (the path of discrete GPUs).
std::unique_ptr<Engine> MakeBackend(const std::string& mode, std::shared_ptr<const GgufFile> file,
                                    const EngineOptions& options);

// Deterministic token ids in [3, vocab) (no control tokens) from `seed`.
std::vector<int32_t> SeededTokens(int64_t n, int64_t vocab, uint32_t seed);

// Blocks [first, first + count) as a table.
std::vector<int32_t> BlockRange(int32_t first, int32_t count);

// Index of the largest value of each row [rows, vocab] (duet::ArgMax).
std::vector<int32_t> ArgMaxRows(absl::Span<const float> logits, int64_t vocab);

// The gap between the largest and second-largest value of row [vocab].
float TopTwoMargin(absl::Span<const float> row);

// Test names for parameters (backend, KV dtype): "cpu_fp8".
using BackendDtype = std::tuple<std::string, kv::CacheDtype>;
std::string BackendDtypeName(const ::testing::TestParamInfo<BackendDtype>& info);

// Largest |got - want| and whether it is within atol + rtol * max|want|, with row/column of the
// worst element in the message.
struct LogitsDiff {
  float max_abs = 0;
  float max_ref = 0;
  int64_t worst = -1;
};
LogitsDiff Compare(absl::Span<const float> got, absl::Span<const float> want);
::testing::AssertionResult LogitsNear(absl::Span<const float> got, absl::Span<const float> want,
                                      float atol, float rtol);

}  // namespace duet::testing

#endif  // DUET_TESTS_ENGINE_ENGINE_TEST_UTIL_H_
