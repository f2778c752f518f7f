// Prefix caching through a prefill node and a decode node (in one process, each with its own
// engine): requests sharing a prefix reuse the prefill node's cached blocks (and say so in
// cached_prompt_tokens), their KV still reaches the decode node whole, and every output is
// token-identical to a cache-off single-process run -- for F32 and FP8 KV, CPU and Vulkan.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/engine/engine_test_util.h"
#include "tests/nodes/node_test_util.h"

namespace duet::nodes_test {
namespace {

using Case = std::tuple<std::string, kv::CacheDtype>;  // backend, KV dtype

class PrefixCacheNodeTest : public ::testing::TestWithParam<Case> {};

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A decode node and a prefill node on `backend` with `dtype` KV. The prefill node's chunks of
// 20 tokens end inside blocks (so reuse starts mid-chunk-grid), one layer per group, small
// KvChunks.
struct Pair {
  std::unique_ptr<DecodeHarness> decode;
  std::unique_ptr<PrefillHarness> prefill;
};
Pair StartPair(const std::string& backend, kv::CacheDtype dtype, bool prefill_caching) {
  DecodeSetup d;
  d.backend = backend;
  d.dtype = dtype;
  PrefillSetup p;
  p.backend = backend;
  p.dtype = dtype;
  p.options.prefill_chunk_tokens = 20;
  p.options.layers_per_group = 1;
  p.options.max_chunk_bytes = 4096;
  p.options.enable_prefix_caching = prefill_caching;
  return Pair{StartDecode(d), StartPrefill(p)};
}

TEST_P(PrefixCacheNodeTest, SharedPrefixesAreReusedAndOutputsEqualACacheOffRun) {
  const auto& [backend, dtype] = GetParam();
  if (backend == "vulkan" && !testing::HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  auto [decode, prefill] = StartPair(backend, dtype, /*prefill_caching=*/true);
  ASSERT_NE(decode, nullptr);
  ASSERT_NE(prefill, nullptr);

  const std::vector<int32_t> system = Prompt(40, 5);  // 2 full blocks of 16 + 8 tokens
  const v1::SamplingParams sampling = Greedy(8);
  struct Turn {
    std::vector<int32_t> prompt;
    std::string salt;
    int64_t want_cached;
  };
  const std::vector<int32_t> first = Concat(system, Prompt(9, 100));
  const std::vector<Turn> turns = {
      {first, "", 0},                                  // cold
      {Concat(system, Prompt(13, 101)), "", 32},      // the system prompt's 2 full blocks
      {first, "", 48},                                 // all 3 full blocks (49 tokens: 1 runs)
      {Concat(system, Prompt(30, 102)), "", 32},      // longer question, same 2 blocks
      {first, "tenant-b", 0},                          // another salt shares nothing
      {Concat(first, Prompt(20, 103)), "tenant-b", 48},  // ...but has its own cache
  };
  for (size_t i = 0; i < turns.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    const Turn& t = turns[i];
    const ClusterResult got =
        RunDisaggregated(*decode, *prefill, absl::StrCat("r-", i), t.prompt, sampling, t.salt);
    ASSERT_TRUE(got.reserve.ok()) << got.reserve.error_message();
    ASSERT_TRUE(got.prefill.ok()) << got.prefill.error_message();
    ASSERT_TRUE(got.stream.status.ok()) << got.stream.status.error_message();
    EXPECT_EQ(got.prefill_response.cached_prompt_tokens(), t.want_cached);
    EXPECT_EQ(got.stream.tokens, SoloRun(backend, dtype, t.prompt, sampling));
  }
  google::protobuf::Map<std::string, int64_t> counters;
  prefill->node->AddCounters(&counters);
  EXPECT_EQ(counters["prefix_cache_hit_tokens"], 32 + 48 + 32 + 48);
  EXPECT_GT(counters["prefix_cache_blocks"], 0);
  // Cached blocks count as free: both nodes are idle.
  EXPECT_TRUE(AwaitDecodeIdle(*decode));
  EXPECT_TRUE(AwaitPrefillIdle(*prefill));
}

// A conversation continuing on the same decode node: the decode node holds turn 1's blocks
// (its prompt, transferred, and its generated tokens, decoded there), so turn 2's transfer
// skips them -- fewer bytes on the wire -- and the output is still that of a cache-off run.
TEST_P(PrefixCacheNodeTest, DecodeNodeReusesAConversationsBlocksAndReceivesOnlyTheNewOnes) {
  const auto& [backend, dtype] = GetParam();
  if (backend == "vulkan" && !testing::HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  // No prefill-side cache: every byte the decode node lacks is sent.
  auto [decode, prefill] = StartPair(backend, dtype, /*prefill_caching=*/false);
  ASSERT_NE(decode, nullptr);
  ASSERT_NE(prefill, nullptr);
  const v1::SamplingParams sampling = Greedy(20);
  const std::vector<int32_t> turn1 = Prompt(37, 61);
  const ClusterResult r1 = RunDisaggregated(*decode, *prefill, "t-1", turn1, sampling, "s");
  ASSERT_TRUE(r1.prefill.ok()) << r1.prefill.error_message();
  ASSERT_TRUE(r1.stream.status.ok()) << r1.stream.status.error_message();
  EXPECT_EQ(r1.reservation.num_cached_blocks(), 0);
  // Turn 1 left 37 + 19 = 56 positions: 3 full blocks cached on the decode node.
  const std::vector<int32_t> turn2 =
      Concat(Concat(turn1, r1.stream.tokens), Prompt(11, 62));  // 37 + 20 + 11 = 68 tokens
  const ClusterResult r2 = RunDisaggregated(*decode, *prefill, "t-2", turn2, sampling, "s");
  ASSERT_TRUE(r2.reserve.ok()) << r2.reserve.error_message();
  ASSERT_TRUE(r2.prefill.ok()) << r2.prefill.error_message();
  ASSERT_TRUE(r2.stream.status.ok()) << r2.stream.status.error_message();
  EXPECT_EQ(r2.reservation.num_cached_blocks(), 3);
  EXPECT_EQ(r2.stream.tokens, SoloRun(backend, dtype, turn2, sampling));
  // Turn 2 sent 2 of its 5 blocks; the same prompt to a fresh decode node sends all 5.
  const ClusterResult cold = RunDisaggregated(*decode, *prefill, "t-3", turn2, sampling, "other");
  ASSERT_TRUE(cold.prefill.ok()) << cold.prefill.error_message();
  EXPECT_EQ(cold.reservation.num_cached_blocks(), 0);
  EXPECT_EQ(cold.stream.tokens, r2.stream.tokens);
  EXPECT_LT(r2.prefill_response.transfer_bytes() * 2, cold.prefill_response.transfer_bytes());
  google::protobuf::Map<std::string, int64_t> counters;
  decode->node->AddCounters(&counters);
  EXPECT_EQ(counters["prefix_cache_hit_tokens"], 48);
  EXPECT_TRUE(AwaitDecodeIdle(*decode));
}

INSTANTIATE_TEST_SUITE_P(
    BackendsAndDtypes, PrefixCacheNodeTest,
    ::testing::Combine(::testing::Values("cpu", "vulkan"),
                       ::testing::Values(kv::CacheDtype::kF32, kv::CacheDtype::kFp8E4M3)),
    [](const ::testing::TestParamInfo<Case>& param_info) {
      return absl::StrCat(std::get<0>(param_info.param), "_",
                          std::string(kv::CacheDtypeName(std::get<1>(param_info.param))));
    });

}  // namespace
}  // namespace duet::nodes_test
