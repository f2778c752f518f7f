// The scheduler's prefix caching: reuse of the longest cached prefix at admission (the prompt's
// last token always runs), salts, multi-turn reuse of generated tokens' blocks, and eviction
// under memory pressure (never a block in use, never a failed request that fits).
#include <random>
#include <string>
#include <vector>

#include "common/kv/block_hash.h"
#include "common/sched/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/sched/sched_test_util.h"

namespace duet::sched {
namespace {

using ::duet::sched::testing::FakePrompt;
using ::duet::sched::testing::Harness;
using ::duet::sched::testing::SmallConfig;
using ::testing::ElementsAreArray;

SchedulerConfig CachingConfig(Role role) {
  SchedulerConfig c = SmallConfig(role);
  c.enable_prefix_caching = true;
  c.model_id = "m";
  return c;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The one prefill chunk of the first plan for `id`.
const PrefillChunk* ChunkOf(const SchedulerOutput& plan, const std::string& id) {
  for (const PrefillChunk& c : plan.prefills) {
    if (c.id.value() == id) return &c;
  }
  return nullptr;
}

TEST(PrefixCachingTest, ReusesTheLongestCachedPrefixAndRecomputesTheRest) {
  Harness h(CachingConfig(Role::kPrefill), 32);
  const std::vector<int32_t> system = FakePrompt(RequestId("system"), 12);  // 3 blocks
  ASSERT_TRUE(h.AddPrompt("a", Concat(system, {1, 2, 3, 4, 5}), 4).ok());
  SchedulerOutput p1 = h.Step();
  const PrefillChunk* a = ChunkOf(p1, "a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->num_cached, 0);
  const std::vector<int32_t> a_blocks = a->block_table;
  EXPECT_EQ(h.finished.at(RequestId("a")).reason, FinishReason::kPrefillDone);
  // a's four full blocks stay cached (evictable) after it left.
  EXPECT_EQ(h.blocks().num_cached(), 4);
  EXPECT_EQ(h.blocks().num_free(), 32);

  // Same system prompt, another question: the three system blocks are reused.
  ASSERT_TRUE(h.AddPrompt("b", Concat(system, {9, 9, 9, 9, 9, 9}), 4).ok());
  SchedulerOutput p2 = h.Step();
  const PrefillChunk* b = ChunkOf(p2, "b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->num_cached, 12);
  EXPECT_THAT(b->tokens, ElementsAreArray(std::vector<int32_t>{9, 9, 9, 9, 9, 9}));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(b->block_table[i], a_blocks[i]) << i;
  // The same prompt again: every full block is cached, but the last token must run, so the
  // last block (positions 16..16 here) is recomputed and the rest reused.
  ASSERT_TRUE(h.AddPrompt("c", Concat(system, {1, 2, 3, 4, 5}), 4).ok());
  SchedulerOutput p3 = h.Step();
  const PrefillChunk* c = ChunkOf(p3, "c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->num_cached, 16);
  EXPECT_EQ(c->tokens.size(), 1u);
  // A prompt that is exactly 4 full blocks, cached: its last block is recomputed whole
  // (3 blocks reused, 4 tokens run).
  ASSERT_TRUE(h.AddPrompt("d", Concat(system, {1, 2, 3, 4}), 4).ok());
  SchedulerOutput p4 = h.Step();
  ASSERT_NE(ChunkOf(p4, "d"), nullptr);
  EXPECT_EQ(ChunkOf(p4, "d")->num_cached, 12);
  EXPECT_EQ(ChunkOf(p4, "d")->tokens.size(), 4u);
  EXPECT_EQ(h.sched().prefix_cache_stats().queried_tokens, 17 + 18 + 17 + 16);
  EXPECT_EQ(h.sched().prefix_cache_stats().hit_tokens, 0 + 12 + 16 + 12);
}

TEST(PrefixCachingTest, RequestsWithDifferentSaltsNeverShare) {
  Harness h(CachingConfig(Role::kPrefill), 32);
  const std::vector<int32_t> prompt = FakePrompt(RequestId("p"), 20);
  ASSERT_TRUE(h.AddPrompt("a", prompt, 2, "tenant-a").ok());
  h.Step();
  ASSERT_TRUE(h.AddPrompt("b", prompt, 2, "tenant-b").ok());
  ASSERT_TRUE(h.AddPrompt("c", prompt, 2, "").ok());
  SchedulerOutput p = h.Step();
  EXPECT_EQ(ChunkOf(p, "b")->num_cached, 0);
  EXPECT_EQ(ChunkOf(p, "c")->num_cached, 0);
  ASSERT_TRUE(h.AddPrompt("d", prompt, 2, "tenant-a").ok());
  EXPECT_EQ(ChunkOf(h.Step(), "d")->num_cached, 16);
}

TEST(PrefixCachingTest, CachingOffReusesNothing) {
  SchedulerConfig config = CachingConfig(Role::kPrefill);
  config.enable_prefix_caching = false;
  Harness h(config, 32);
  const std::vector<int32_t> prompt = FakePrompt(RequestId("p"), 20);
  ASSERT_TRUE(h.AddPrompt("a", prompt, 2).ok());
  h.Step();
  EXPECT_EQ(h.blocks().num_cached(), 0);
  ASSERT_TRUE(h.AddPrompt("b", prompt, 2).ok());
  EXPECT_EQ(ChunkOf(h.Step(), "b")->num_cached, 0);
  EXPECT_EQ(h.sched().prefix_cache_stats().queried_tokens, 0);
}

// Colocated: a finished turn's prompt and generated tokens are cached, so the next turn of the
// conversation (history + new message) prefills only the new part.
TEST(PrefixCachingTest, NextTurnReusesThePreviousTurnsPromptAndOutput) {
  Harness h(CachingConfig(Role::kColocated), 32);
  const std::vector<int32_t> turn1 = FakePrompt(RequestId("turn1"), 8);
  ASSERT_TRUE(h.AddPrompt("t1", turn1, 9).ok());
  h.RunUntilIdle();
  const FinishedRequest& f = h.finished.at(RequestId("t1"));
  ASSERT_EQ(f.output_tokens.size(), 9u);
  // 8 prompt + 8 decoded positions ran (the 9th token never runs): 4 full blocks cached.
  EXPECT_EQ(h.blocks().num_cached(), 4);
  const std::vector<int32_t> turn2 = Concat(Concat(turn1, f.output_tokens), {7, 7, 7});
  ASSERT_TRUE(h.AddPrompt("t2", turn2, 3).ok());
  SchedulerOutput p = h.Step();
  ASSERT_NE(ChunkOf(p, "t2"), nullptr);
  EXPECT_EQ(ChunkOf(p, "t2")->num_cached, 16);
  EXPECT_EQ(ChunkOf(p, "t2")->tokens.size(), 4u);  // the 9th output token and the new 3
  EXPECT_EQ(h.sched().Info(RequestId("t2"))->num_prefix_hit_tokens, 16);
  h.RunUntilIdle();
}

// Many requests over a few shared prefixes in a pool far smaller than their total: cached blocks
// are evicted as needed, never one in use (the harness checks every plan's tables and the
// pool's reference counts), and every request completes.
TEST(PrefixCachingTest, EvictionUnderPressureNeverTouchesBlocksInUseOrFailsARequest) {
  for (const Role role : {Role::kPrefill, Role::kColocated}) {
    SCOPED_TRACE(std::string(RoleName(role)));
    Harness h(CachingConfig(role), 24);
    std::mt19937 rng(11);
    std::vector<std::vector<int32_t>> prefixes;
    for (int i = 0; i < 4; ++i) prefixes.push_back(FakePrompt(RequestId("sys" + std::to_string(i)), 16));
    int added = 0;
    for (int step = 0; step < 400; ++step) {
      if (rng() % 2 == 0 && added < 150) {
        const std::string id = "r" + std::to_string(added++);
        std::vector<int32_t> prompt = prefixes[rng() % prefixes.size()];
        const int suffix = 1 + static_cast<int>(rng() % 20);
        for (int k = 0; k < suffix; ++k) prompt.push_back(static_cast<int32_t>(rng() % 1000));
        ASSERT_TRUE(h.AddPrompt(id, prompt, 1 + static_cast<int64_t>(rng() % 12),
                                rng() % 5 == 0 ? "other" : "")
                        .ok());
      }
      if (h.sched().has_requests()) h.Step();
    }
    h.RunUntilIdle();
    EXPECT_EQ(h.finished.size(), static_cast<size_t>(added));
    for (const auto& [id, f] : h.finished) {
      EXPECT_TRUE(f.reason == FinishReason::kLength || f.reason == FinishReason::kPrefillDone)
          << id << ": " << FinishReasonName(f.reason);
    }
    EXPECT_GT(h.sched().prefix_cache_stats().hit_tokens, 0);
    EXPECT_GT(h.blocks().num_evictions(), 0);
    EXPECT_EQ(h.blocks().num_free(), h.blocks().num_blocks());
  }
}

}  // namespace
}  // namespace duet::sched
