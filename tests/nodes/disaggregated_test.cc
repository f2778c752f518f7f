// A prefill node and a decode node in one process, each with its own engine: a request's KV goes
// over PushKv in many chunks (small chunk budget, prefill chunks that end inside blocks), and
// the tokens equal a single-process run of the same KV dtype, alone or batched with others.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/engine/engine_test_util.h"
#include "tests/nodes/node_test_util.h"

namespace duet::nodes_test {
namespace {

struct Cluster {
  std::unique_ptr<DecodeHarness> decode;
  std::unique_ptr<PrefillHarness> prefill;
};

Cluster StartCluster(const std::string& backend, kv::CacheDtype dtype) {
  Cluster c;
  DecodeSetup d;
  d.backend = backend;
  d.dtype = dtype;
  d.options.max_num_seqs = 8;
  c.decode = StartDecode(d);
  PrefillSetup p;
  p.backend = backend;
  p.dtype = dtype;
  p.options.max_num_seqs = 4;
  // Chunks of 20 tokens end inside blocks; one layer per group; small KvChunks.
  p.options.prefill_chunk_tokens = 20;
  p.options.max_num_batched_tokens = 40;
  p.options.layers_per_group = 1;
  p.options.max_chunk_bytes = 4096;
  c.prefill = StartPrefill(p);
  return c;
}

using Case = std::tuple<kv::CacheDtype, int64_t>;  // KV dtype, prompt length

class DisaggregatedTest : public ::testing::TestWithParam<Case> {};

TEST_P(DisaggregatedTest, GreedyTokensEqualASingleProcessRun) {
  const auto& [dtype, length] = GetParam();
  Cluster c = StartCluster("cpu", dtype);
  ASSERT_NE(c.decode, nullptr);
  ASSERT_NE(c.prefill, nullptr);
  const std::vector<int32_t> prompt = Prompt(length, 11);
  const v1::SamplingParams sampling = Greedy(12);
  const std::vector<int32_t> want = SoloRun("cpu", dtype, prompt, sampling);

  const ClusterResult got = RunDisaggregated(*c.decode, *c.prefill, "r-1", prompt, sampling);
  ASSERT_TRUE(got.reserve.ok()) << got.reserve.error_message();
  ASSERT_TRUE(got.prefill.ok()) << got.prefill.error_message();
  ASSERT_TRUE(got.stream.status.ok()) << got.stream.status.error_message();
  EXPECT_EQ(got.stream.tokens, want);
  EXPECT_EQ(got.prefill_response.first_token(), want[0]);
  EXPECT_EQ(got.prefill_response.num_prompt_tokens(), length);
  EXPECT_GT(got.prefill_response.transfer_bytes(), 0);
  EXPECT_EQ(got.stream.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(got.stream.usage.prompt_tokens(), length);
  EXPECT_EQ(got.stream.usage.completion_tokens(), 12);
  EXPECT_TRUE(AwaitDecodeIdle(*c.decode));
  EXPECT_TRUE(AwaitPrefillIdle(*c.prefill));
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return absl::StrCat(std::string(kv::CacheDtypeName(std::get<0>(info.param))), "_",
                      std::get<1>(info.param), "_tokens");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DisaggregatedTest,
                         ::testing::Combine(::testing::Values(kv::CacheDtype::kF32,
                                                              kv::CacheDtype::kF16,
                                                              kv::CacheDtype::kFp8E4M3),
                                            ::testing::Values(int64_t{45}, int64_t{32})),
                         CaseName);

TEST(DisaggregatedTest, SampledTokensAndLogprobsEqualASingleProcessRun) {
  Cluster c = StartCluster("cpu", kv::CacheDtype::kFp8E4M3);
  ASSERT_NE(c.decode, nullptr);
  const std::vector<int32_t> prompt = Prompt(23, 5);
  v1::SamplingParams sampling;
  sampling.set_temperature(0.9);
  sampling.set_top_k(40);
  sampling.set_seed(1234);
  sampling.set_max_tokens(10);
  sampling.set_ignore_eos(true);
  sampling.set_repetition_penalty(1.3);
  sampling.set_logprobs(3);
  const std::vector<int32_t> want = SoloRun("cpu", kv::CacheDtype::kFp8E4M3, prompt, sampling);

  const ClusterResult got = RunDisaggregated(*c.decode, *c.prefill, "r-s", prompt, sampling);
  ASSERT_TRUE(got.prefill.ok()) << got.prefill.error_message();
  ASSERT_TRUE(got.stream.status.ok()) << got.stream.status.error_message();
  EXPECT_EQ(got.stream.tokens, want);
  ASSERT_EQ(got.stream.logprobs.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got.stream.logprobs[i].token_id(), want[i]);
    EXPECT_EQ(got.stream.logprobs[i].top_logprobs_size(), 3);
  }
  EXPECT_EQ(got.prefill_response.first_token_logprobs().token_id(), want[0]);
}

TEST(DisaggregatedTest, StopTokenEndsTheStreamWithStop) {
  Cluster c = StartCluster("cpu", kv::CacheDtype::kF16);
  ASSERT_NE(c.decode, nullptr);
  const std::vector<int32_t> prompt = Prompt(19, 8);
  const std::vector<int32_t> free_run = SoloRun("cpu", kv::CacheDtype::kF16, prompt, Greedy(8));
  // Stop at the first occurrence of the fourth token.
  v1::SamplingParams sampling = Greedy(8);
  sampling.add_stop_token_ids(free_run[3]);
  const std::vector<int32_t> want = SoloRun("cpu", kv::CacheDtype::kF16, prompt, sampling);
  ASSERT_LE(want.size(), 4u);
  const ClusterResult got = RunDisaggregated(*c.decode, *c.prefill, "r-stop", prompt, sampling);
  ASSERT_TRUE(got.stream.status.ok()) << got.stream.status.error_message();
  EXPECT_EQ(got.stream.tokens, want);
  EXPECT_EQ(got.stream.finish, v1::FINISH_REASON_STOP);
  EXPECT_TRUE(AwaitDecodeIdle(*c.decode));
}

TEST(DisaggregatedTest, FirstTokenAloneFinishesWithoutDecoding) {
  Cluster c = StartCluster("cpu", kv::CacheDtype::kFp8E4M3);
  ASSERT_NE(c.decode, nullptr);
  const std::vector<int32_t> prompt = Prompt(17, 3);
  const ClusterResult got = RunDisaggregated(*c.decode, *c.prefill, "r-one", prompt, Greedy(1));
  ASSERT_TRUE(got.stream.status.ok()) << got.stream.status.error_message();
  EXPECT_EQ(got.stream.tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, prompt, Greedy(1)));
  EXPECT_EQ(got.stream.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(got.stream.usage.completion_tokens(), 1);
  EXPECT_TRUE(AwaitDecodeIdle(*c.decode));
}

// Continuous batching: requests of different lengths arrive together and decode in shared
// steps; each stream equals its solo run.
TEST(DisaggregatedTest, ConcurrentRequestsEachEqualTheirSoloRun) {
  Cluster c = StartCluster("cpu", kv::CacheDtype::kFp8E4M3);
  ASSERT_NE(c.decode, nullptr);
  struct Job {
    std::vector<int32_t> prompt;
    v1::SamplingParams sampling;
    std::vector<int32_t> want;
    ClusterResult got;
  };
  std::vector<Job> jobs;
  const int64_t lengths[] = {5, 31, 48, 16, 70};
  const int32_t max_tokens[] = {20, 6, 14, 25, 9};
  for (int i = 0; i < 5; ++i) {
    Job j;
    j.prompt = Prompt(lengths[i], 100 + i);
    j.sampling = Greedy(max_tokens[i]);
    j.want = SoloRun("cpu", kv::CacheDtype::kFp8E4M3, j.prompt, j.sampling);
    jobs.push_back(std::move(j));
  }
  std::vector<std::thread> threads;
  for (size_t i = 0; i < jobs.size(); ++i) {
    threads.emplace_back([&, i] {
      jobs[i].got = RunDisaggregated(*c.decode, *c.prefill, absl::StrCat("r-", i), jobs[i].prompt,
                                     jobs[i].sampling);
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < jobs.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    EXPECT_TRUE(jobs[i].got.prefill.ok()) << jobs[i].got.prefill.error_message();
    EXPECT_TRUE(jobs[i].got.stream.status.ok()) << jobs[i].got.stream.status.error_message();
    EXPECT_EQ(jobs[i].got.stream.tokens, jobs[i].want);
  }
  EXPECT_TRUE(AwaitDecodeIdle(*c.decode));
  EXPECT_TRUE(AwaitPrefillIdle(*c.prefill));
}

// The Vulkan engine on both nodes (lavapipe without a GPU), against a Vulkan solo run.
class VulkanDisaggregatedTest : public ::testing::TestWithParam<kv::CacheDtype> {};

TEST_P(VulkanDisaggregatedTest, GreedyTokensEqualASingleProcessRun) {
  if (!testing::HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  const kv::CacheDtype dtype = GetParam();
  Cluster c = StartCluster("vulkan", dtype);
  ASSERT_NE(c.decode, nullptr);
  ASSERT_NE(c.prefill, nullptr);
  const std::vector<int32_t> prompt = Prompt(37, 21);
  const v1::SamplingParams sampling = Greedy(6);
  const ClusterResult got = RunDisaggregated(*c.decode, *c.prefill, "r-vk", prompt, sampling);
  ASSERT_TRUE(got.prefill.ok()) << got.prefill.error_message();
  ASSERT_TRUE(got.stream.status.ok()) << got.stream.status.error_message();
  EXPECT_EQ(got.stream.tokens, SoloRun("vulkan", dtype, prompt, sampling));
  EXPECT_TRUE(AwaitDecodeIdle(*c.decode));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, VulkanDisaggregatedTest,
                         ::testing::Values(kv::CacheDtype::kF32, kv::CacheDtype::kFp8E4M3),
                         [](const ::testing::TestParamInfo<kv::CacheDtype>& p) {
                           return std::string(kv::CacheDtypeName(p.param));
                         });

}  // namespace
}  // namespace duet::nodes_test
