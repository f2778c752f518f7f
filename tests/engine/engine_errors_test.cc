// Bad input on both backends: INVALID_ARGUMENT with a message naming the problem, nothing
// crashes, and a rejected call changes nothing (the next call gives the same result as on a
// fresh engine).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "tests/engine/engine_test_util.h"

namespace duet::testing {
namespace {

using ::testing::HasSubstr;

class EngineErrorsTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
    file_ = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 11);
    ASSERT_NE(file_, nullptr);
    engine_ = MakeEngine(GetParam(), file_, TestOptions(kv::CacheDtype::kFp8E4M3, 8, 2));
    ASSERT_NE(engine_, nullptr);
  }

  std::shared_ptr<const GgufFile> file_;
  std::unique_ptr<Engine> engine_;
};

struct BadCall {
  std::string what;
  std::function<absl::Status(Engine&)> call;
  std::string message;
};

TEST_P(EngineErrorsTest, BadCallsAreInvalidArgumentAndChangeNothing) {
  Engine& e = *engine_;
  const int64_t vocab = e.config().vocab_size;
  const int64_t context = e.config().context_length;
  const std::vector<int32_t> table = {0, 1};      // positions [0, 32)
  const std::vector<int32_t> bad_block = {0, 8};  // the pool has blocks 0..7
  const std::vector<int32_t> long_table = BlockRange(0, 8);
  static const std::vector<int32_t> kPrompt = {1, 2, 3};
  const std::vector<BadCall> calls = {
      {"token id -1",
       [&](Engine& x) {
         return x.Prefill({table, 0, 0}, {1, -1}).status();
       },
       "token 1 has id -1"},
      {"token id == vocab",
       [&](Engine& x) {
         return x.Prefill({table, 0, 0}, {static_cast<int32_t>(vocab)}).status();
       },
       "outside [0, 260)"},
      {"no tokens",
       [&](Engine& x) {
         return x.Prefill({table, 0, 0}, {}).status();
       },
       "no tokens"},
      {"block table too short",
       [&](Engine& x) {
         return x.Prefill({table, 30, 0}, {1, 2, 3}).status();  // positions 30..32
       },
       "the block table has 2 blocks; positions [0, 33) need 3"},
      {"block id outside the pool",
       [&](Engine& x) {
         return x.Prefill({bad_block, 15, 0}, {1, 2}).status();
       },
       "block table entry 1 = 8 is outside the pool"},
      {"context overflow",
       [&](Engine& x) {
         return x.Prefill({long_table, context - 1, 0}, {1, 2}).status();
       },
       "exceed the model's context length"},
      {"negative num_cached",
       [&](Engine& x) {
         return x.Prefill({table, -1, 0}, {1}).status();
       },
       "num_cached -1"},
      {"tail slot out of range",
       [&](Engine& x) {
         return x.Prefill({table, 0, 2}, {1}).status();
       },
       "tail slot 2"},
      {"decode: bad token in item 1",
       [&](Engine& x) {
         const std::vector<int32_t> t2 = {2, 3};
         const DecodeItem items[] = {{{table, 3, 0}, 5}, {{t2, 0, 1}, 9999}};
         return x.DecodeStep(items).status();
       },
       "DecodeStep item 1: token 0 has id 9999"},
      {"decode: two items write one block",
       [&](Engine& x) {
         const DecodeItem items[] = {{{table, 3, 0}, 5}, {{table, 4, 1}, 6}};
         return x.DecodeStepGreedy(items).status();
       },
       "which an earlier item of the batch also writes"},
      {"decode: empty batch", [&](Engine& x) { return x.DecodeStep({}).status(); }, "empty batch"},
      {"decode: context overflow",
       [&](Engine& x) {
         const DecodeItem item{{long_table, context, 0}, 1};
         return x.DecodeStep({&item, 1}).status();
       },
       "context length"},
      {"verify: too many tokens",
       [&](Engine& x) {
         return x.Verify({long_table, 0, 0}, std::vector<int32_t>(kMaxVerifyTokens + 1, 1))
             .status();
       },
       "at most 32"},
      {"verify: block table too short",
       [&](Engine& x) {
         return x.Verify({table, 31, 0}, {1, 2}).status();
       },
       "the block table has 2 blocks"},
  };
  for (const BadCall& c : calls) {
    const absl::Status status = c.call(e);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message)) << c.what;
  }

  // After all that, the engine computes what a fresh one does.
  std::unique_ptr<Engine> fresh =
      MakeEngine(GetParam(), file_, TestOptions(kv::CacheDtype::kFp8E4M3, 8, 2));
  ASSERT_NE(fresh, nullptr);
  absl::StatusOr<std::vector<float>> got = e.Prefill({table, 0, 0}, kPrompt, true);
  absl::StatusOr<std::vector<float>> want = fresh->Prefill({table, 0, 0}, kPrompt, true);
  ASSERT_TRUE(got.ok() && want.ok());
  EXPECT_EQ(*got, *want);
}

TEST_P(EngineErrorsTest, BadOptionsAreRejectedAtCreation) {
  EngineOptions options = TestOptions(kv::CacheDtype::kFp8E4M3, 8, 2);
  options.block_size = 12;
  absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(GetParam(), file_, options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(engine.status().message()), HasSubstr("power of two"));
  options = TestOptions(kv::CacheDtype::kF16, 0, 2);
  options.kv_pool_bytes = 100;
  engine = CreateEngine(GetParam(), file_, options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(engine.status().message()), HasSubstr("the KV pool holds no block"));
  engine = CreateEngine("tpu", file_, options);
  EXPECT_THAT(std::string(engine.status().message()),
              HasSubstr("backend 'tpu' is not available (available: vulkan, cpu)"));
}

INSTANTIATE_TEST_SUITE_P(Backends, EngineErrorsTest, ::testing::Values("cpu", "vulkan"));

TEST(VulkanEngineOptionsTest, UnknownDeviceIsNotFoundListingDevices) {
  if (!HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 11);
  EngineOptions options = TestOptions(kv::CacheDtype::kF16);
  options.vk_device = "no-such-gpu";
  absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine("vulkan", file, options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kNotFound) << engine.status();
  EXPECT_THAT(std::string(engine.status().message()), HasSubstr("no-such-gpu"));
}

}  // namespace
}  // namespace duet::testing
