// Batch invariance: a sequence's greedy tokens (and, on both backends, its logits bit for bit)
// do not depend on what else is in the decode batch: its position in the batch, the batch size
// (1 to 12, across the matrix-vector kernel's groups of 8), or the other sequences' lengths.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "tests/engine/engine_test_util.h"

namespace duet::testing {
namespace {

constexpr int kSteps = 6;
constexpr int kNumSeqs = 12;

struct Seq {
  std::vector<int32_t> table;
  int32_t tail = 0;
  std::vector<int32_t> prompt;
};

std::vector<Seq> MakeSeqs(int64_t vocab) {
  std::vector<Seq> seqs;
  for (int s = 0; s < kNumSeqs; ++s) {
    Seq q;
    q.table = BlockRange(s * 4, 4);
    q.tail = s;
    const int len = 3 + (s * 7) % 29;  // 3 .. 31 tokens
    for (int i = 0; i < len; ++i)
      q.prompt.push_back(static_cast<int32_t>((s * 31 + i * 13) % vocab));
    seqs.push_back(q);
  }
  return seqs;
}

// Runs `order` (sequence ids; each batch step decodes all of them together) for kSteps greedy
// steps from their prompts; returns per sequence the tokens and the logits of every step.
void RunMix(Engine& engine, const std::vector<Seq>& seqs, const std::vector<int>& order,
            std::map<int, std::vector<int32_t>>* tokens,
            std::map<int, std::vector<float>>* logits) {
  const int64_t vocab = engine.config().vocab_size;
  std::vector<int32_t> next(seqs.size());
  std::vector<int64_t> pos(seqs.size());
  for (int s : order) {
    absl::StatusOr<std::vector<float>> l =
        engine.Prefill({seqs[s].table, 0, seqs[s].tail}, seqs[s].prompt);
    ASSERT_TRUE(l.ok()) << l.status();
    next[s] = ArgMaxRows(*l, vocab)[0];
    pos[s] = static_cast<int64_t>(seqs[s].prompt.size());
    (*tokens)[s] = {next[s]};
    (*logits)[s] = {};
  }
  for (int step = 0; step < kSteps; ++step) {
    std::vector<DecodeItem> batch;
    for (int s : order) batch.push_back({{seqs[s].table, pos[s], seqs[s].tail}, next[s]});
    absl::StatusOr<std::vector<float>> l = engine.DecodeStep(batch);
    ASSERT_TRUE(l.ok()) << l.status();
    const std::vector<int32_t> ids = ArgMaxRows(*l, vocab);
    for (size_t i = 0; i < order.size(); ++i) {
      const int s = order[i];
      (*logits)[s].insert((*logits)[s].end(), l->begin() + static_cast<int64_t>(i) * vocab,
                          l->begin() + static_cast<int64_t>(i + 1) * vocab);
      next[s] = ids[i];
      (*tokens)[s].push_back(ids[i]);
      ++pos[s];
    }
  }
}

class BatchInvarianceTest
    : public ::testing::TestWithParam<std::tuple<std::string, kv::CacheDtype>> {};

TEST_P(BatchInvarianceTest, GreedyTokensDoNotDependOnTheBatch) {
  const auto& [backend, dtype] = GetParam();
  if (backend == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 21);
  ASSERT_NE(file, nullptr);
  std::unique_ptr<Engine> engine =
      MakeEngine(backend, file, TestOptions(dtype, 4 * kNumSeqs, kNumSeqs));
  ASSERT_NE(engine, nullptr);
  const std::vector<Seq> seqs = MakeSeqs(engine->config().vocab_size);

  // Each sequence alone.
  std::map<int, std::vector<int32_t>> solo_tokens;
  std::map<int, std::vector<float>> solo_logits;
  for (int s = 0; s < kNumSeqs; ++s) {
    ASSERT_NO_FATAL_FAILURE(RunMix(*engine, seqs, {s}, &solo_tokens, &solo_logits));
  }
  const std::vector<std::vector<int>> mixes = {
      {0, 1, 2, 3},
      {3, 2, 1, 0},
      {5, 0},
      {11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0},  // 12: matvec groups of 8 + 4
      {2, 7, 4, 9, 11, 1, 6, 8, 0},            // 9
  };
  for (const std::vector<int>& mix : mixes) {
    std::map<int, std::vector<int32_t>> tokens;
    std::map<int, std::vector<float>> logits;
    ASSERT_NO_FATAL_FAILURE(RunMix(*engine, seqs, mix, &tokens, &logits));
    for (int s : mix) {
      EXPECT_EQ(tokens[s], solo_tokens[s]) << "sequence " << s << " in a batch of " << mix.size();
      EXPECT_TRUE(logits[s] == solo_logits[s])
          << "sequence " << s << " in a batch of " << mix.size() << ": "
          << LogitsNear(logits[s], solo_logits[s], 0, 0).message();
    }
  }

  // The greedy fast path gives the same tokens as the logits path, in a mixed batch.
  std::vector<DecodeItem> batch;
  for (int s = 0; s < kNumSeqs; ++s) {
    absl::StatusOr<std::vector<float>> l =
        engine->Prefill({seqs[s].table, 0, seqs[s].tail}, seqs[s].prompt);
    ASSERT_TRUE(l.ok());
    batch.push_back({{seqs[s].table, static_cast<int64_t>(seqs[s].prompt.size()), seqs[s].tail},
                     solo_tokens[s][0]});
  }
  absl::StatusOr<std::vector<int32_t>> ids = engine->DecodeStepGreedy(batch);
  ASSERT_TRUE(ids.ok()) << ids.status();
  for (int s = 0; s < kNumSeqs; ++s) EXPECT_EQ((*ids)[static_cast<size_t>(s)], solo_tokens[s][1]);
}

// A CPU driver running every dispatch on the submitting thread (EngineOptions::vk_cpu_threads
// 0) computes the same bits as one with worker threads: workgroups do not depend on who runs
// them.
TEST(VulkanCpuThreadsTest, InlineDispatchesGiveTheSameLogits) {
  if (!HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 22);
  ASSERT_NE(file, nullptr);
  const char* saved = std::getenv("LP_NUM_THREADS");
  const std::string saved_value = saved != nullptr ? saved : "";
  std::map<int, std::vector<int32_t>> tokens[2];
  std::map<int, std::vector<float>> logits[2];
  for (int inline_run = 0; inline_run < 2; ++inline_run) {
    EngineOptions options = TestOptions(kv::CacheDtype::kFp8E4M3, 4 * kNumSeqs, kNumSeqs);
    options.vk_cpu_threads = inline_run == 1 ? 0 : 2;
    std::unique_ptr<Engine> engine = MakeEngine("vulkan", file, options);
    // The setting reached the driver's variable (lavapipe reads it when the instance is made).
    ASSERT_NE(std::getenv("LP_NUM_THREADS"), nullptr);
    EXPECT_STREQ(std::getenv("LP_NUM_THREADS"), inline_run == 1 ? "0" : "2");
    // Later engines of this process get the driver's default again.
    if (saved != nullptr) {
      setenv("LP_NUM_THREADS", saved_value.c_str(), 1);
    } else {
      unsetenv("LP_NUM_THREADS");
    }
    ASSERT_NE(engine, nullptr);
    const std::vector<Seq> seqs = MakeSeqs(engine->config().vocab_size);
    ASSERT_NO_FATAL_FAILURE(
        RunMix(*engine, seqs, {0, 3, 5, 7, 9}, &tokens[inline_run], &logits[inline_run]));
  }
  EXPECT_EQ(tokens[0], tokens[1]);
  EXPECT_TRUE(logits[0] == logits[1]);
}

TEST(VulkanCpuThreadsTest, OutOfRangeIsAnError) {
  if (!HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 22);
  ASSERT_NE(file, nullptr);
  EngineOptions options = TestOptions(kv::CacheDtype::kFp8E4M3);
  options.vk_cpu_threads = kMaxVkCpuThreads + 1;
  const absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine("vulkan", file, options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("257"), std::string::npos) << engine.status();
}

INSTANTIATE_TEST_SUITE_P(Backends, BatchInvarianceTest,
                         ::testing::Combine(::testing::Values("cpu", "vulkan"),
                                            ::testing::Values(kv::CacheDtype::kF16,
                                                              kv::CacheDtype::kFp8E4M3)),
                         BackendDtypeName);

}  // namespace
}  // namespace duet::testing
