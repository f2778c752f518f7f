// Speculative decoding in the scheduler: lookahead positions for drafted tokens, granted from
// free blocks only and within the budgets; several tokens appended per decode step; the blocks
// of rejected positions released (KV rollback by truncating the table) with the pool's
// accounting exact after every step (the Harness checks it); outputs unchanged.
#include <random>
#include <string>
#include <vector>

#include "common/sched/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/sched/sched_test_util.h"

namespace duet::sched {
namespace {

using ::duet::sched::testing::FakeToken;
using ::duet::sched::testing::Harness;
using ::duet::sched::testing::SmallConfig;
using ::testing::HasSubstr;

void SetAllLookahead(Harness& h, const std::vector<std::string>& ids, int64_t k) {
  for (const std::string& id : ids) {
    if (h.sched().Info(RequestId(id)).has_value()) {
      ASSERT_TRUE(h.sched().SetLookahead(RequestId(id), k).ok());
    }
  }
}

// Random acceptance on a decode node and a colocated node (prefix caching on): every output is
// the one plain decoding gives, fewer steps are needed, and every block returns to the pool.
TEST(SpeculationSchedulerTest, RandomAcceptanceKeepsOutputsAndPoolExact) {
  for (Role role : {Role::kDecode, Role::kColocated}) {
    SCOPED_TRACE(std::string(RoleName(role)));
    SchedulerConfig config = SmallConfig(role);
    config.enable_prefix_caching = true;
    std::mt19937_64 rng(7);
    Harness h(config, 64);
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i) {
      const std::string id = "r" + std::to_string(i);
      ids.push_back(id);
      const int64_t prompt = 5 + i * 3;
      const int64_t max_tokens = 9 + i * 5;
      ASSERT_TRUE((role == Role::kDecode ? h.AddRunning(id, prompt, max_tokens)
                                         : h.Add(id, prompt, max_tokens))
                      .ok());
    }
    SetAllLookahead(h, ids, 5);
    int64_t granted = 0;
    h.accept_fn = [&](const DecodeEntry& d) {
      granted += d.num_lookahead;
      return static_cast<int64_t>(rng() % static_cast<uint64_t>(d.num_lookahead + 1));
    };
    const int64_t steps = h.RunUntilIdle(1000);
    EXPECT_GT(granted, 0);
    ASSERT_EQ(h.finished.size(), ids.size());
    int64_t generated = 0;
    for (const auto& [id, f] : h.finished) {
      EXPECT_EQ(f.reason, FinishReason::kLength) << id;
      EXPECT_EQ(f.output_tokens, h.ExpectedOutput(id, f.output_tokens.size())) << id;
      generated += static_cast<int64_t>(f.output_tokens.size());
    }
    // Plain decoding needs at least 34 steps for the longest request (max_tokens 34).
    EXPECT_LT(steps, 25) << generated << " tokens";
    EXPECT_EQ(h.sched().num_preemptions(), 0);
    EXPECT_EQ(h.blocks().num_used(), 0);  // cached blocks are evictable, not used
    EXPECT_GT(h.blocks().num_evictable(), 0);
  }
}

// Lookahead never exceeds max_tokens: with every draft accepted, a request stops exactly at
// max_tokens (kLength); the last step asks for no more drafts than tokens left.
TEST(SpeculationSchedulerTest, LookaheadStopsAtMaxTokens) {
  Harness h(SmallConfig(Role::kDecode), 32);
  ASSERT_TRUE(h.AddRunning("a", 6, 8).ok());  // 1 token from the "prefill node", 7 to go
  ASSERT_TRUE(h.sched().SetLookahead(RequestId("a"), 4).ok());
  h.accept_fn = [](const DecodeEntry& d) { return d.num_lookahead; };
  SchedulerOutput p1 = h.Step();
  ASSERT_EQ(p1.decodes.size(), 1u);
  EXPECT_EQ(p1.decodes[0].num_lookahead, 4);  // 1 + 4 new tokens: 6 of 8
  EXPECT_EQ(p1.num_decode_tokens, 5);
  SchedulerOutput p2 = h.Step();
  ASSERT_EQ(p2.decodes.size(), 1u);
  EXPECT_EQ(p2.decodes[0].num_lookahead, 1);  // 2 tokens left: the next and 1 draft
  EXPECT_FALSE(h.sched().has_requests());
  ASSERT_TRUE(h.finished.contains(RequestId("a")));
  EXPECT_EQ(h.finished[RequestId("a")].reason, FinishReason::kLength);
  EXPECT_EQ(h.finished[RequestId("a")].output_tokens.size(), 8u);
}

// Rejected drafts give back their blocks: the table shrinks to what the committed positions
// and the next token need.
TEST(SpeculationSchedulerTest, RejectedPositionsReleaseTheirBlocks) {
  Harness h(SmallConfig(Role::kDecode), 32);
  ASSERT_TRUE(h.AddRunning("a", 7, 40).ok());  // KV of 7 positions, token 7 next: 2 blocks
  ASSERT_TRUE(h.sched().SetLookahead(RequestId("a"), 9).ok());
  const int64_t before = h.sched().Info(RequestId("a"))->num_blocks;
  EXPECT_EQ(before, 2);
  h.accept_fn = [](const DecodeEntry&) { return 0; };
  SchedulerOutput p = h.Step();
  ASSERT_EQ(p.decodes.size(), 1u);
  EXPECT_EQ(p.decodes[0].num_lookahead, 9);
  EXPECT_EQ(p.decodes[0].block_table.size(), 5u);  // positions 7..16
  // 8 positions committed, position 8 next: 3 blocks.
  EXPECT_EQ(h.sched().Info(RequestId("a"))->num_computed, 8);
  EXPECT_EQ(h.sched().Info(RequestId("a"))->num_blocks, 3);
  EXPECT_EQ(h.blocks().num_used(), 3);
  // Accepting 5 of 9 keeps the blocks up to the next position (8 + 6 = 14 -> 4 blocks).
  h.accept_fn = [](const DecodeEntry&) { return 5; };
  h.Step();
  EXPECT_EQ(h.sched().Info(RequestId("a"))->num_computed, 14);
  EXPECT_EQ(h.sched().Info(RequestId("a"))->num_blocks, 4);
  EXPECT_EQ(h.blocks().num_used(), 4);
}

// Speculation takes only free blocks and never preempts: with a full pool every sequence still
// gets its decode token and the lookahead shrinks (to nothing when no block is free).
TEST(SpeculationSchedulerTest, LookaheadUsesFreeBlocksOnlyAndNeverPreempts) {
  Harness h(SmallConfig(Role::kDecode), 7);
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(h.AddRunning(id, 6, 10).ok());  // 2 each
  SetAllLookahead(h, {"a", "b", "c"}, 8);
  h.accept_fn = [](const DecodeEntry&) { return 0; };
  SchedulerOutput p = h.Step();
  ASSERT_EQ(p.decodes.size(), 3u);
  // Position 6 is in each sequence's second block; the one free block goes to a (positions
  // 7..11 for drafts: 5), then b and c have only position 7 of their own second block.
  EXPECT_EQ(p.decodes[0].num_lookahead, 5);
  EXPECT_EQ(p.decodes[1].num_lookahead, 1);  // room left in its own second block
  EXPECT_EQ(p.decodes[2].num_lookahead, 1);
  EXPECT_TRUE(p.preempted.empty());
  EXPECT_EQ(h.sched().num_preemptions(), 0);
}

// Lookahead counts against max_num_batched_tokens, after every decode token.
TEST(SpeculationSchedulerTest, LookaheadStaysWithinTheTokenBudget) {
  SchedulerConfig config = SmallConfig(Role::kDecode);
  config.max_num_seqs = 4;
  config.max_num_batched_tokens = 10;
  Harness h(config, 64);
  for (const char* id : {"a", "b", "c", "d"}) ASSERT_TRUE(h.AddRunning(id, 3, 30).ok());
  SetAllLookahead(h, {"a", "b", "c", "d"}, 4);
  h.accept_fn = [](const DecodeEntry& d) { return d.num_lookahead; };
  SchedulerOutput p = h.Step();  // CheckPlan: tokens within the budget
  ASSERT_EQ(p.decodes.size(), 4u);
  EXPECT_EQ(p.num_decode_tokens, 10);
  EXPECT_EQ(p.decodes[0].num_lookahead, 4);
  EXPECT_EQ(p.decodes[1].num_lookahead, 2);
  EXPECT_EQ(p.decodes[3].num_lookahead, 0);
}

TEST(SpeculationSchedulerTest, BadResultsAndSettingsAreRejected) {
  Harness h(SmallConfig(Role::kDecode), 32);
  ASSERT_TRUE(h.AddRunning("a", 6, 20).ok());
  EXPECT_EQ(h.sched().SetLookahead(RequestId("zz"), 1).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(h.sched().SetLookahead(RequestId("a"), -1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.sched().SetLookahead(RequestId("a"), kMaxLookahead + 1).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(h.sched().SetLookahead(RequestId("a"), 2).ok());
  SchedulerOutput p = h.sched().Schedule();
  ASSERT_EQ(p.decodes.size(), 1u);
  ASSERT_EQ(p.decodes[0].num_lookahead, 2);
  const RequestId a("a");
  // More accepted drafts than the lookahead.
  absl::Status s = h.sched().UpdateFromOutput(
      {{{.id = a, .token = 1, .accepted_drafts = {FakeToken(a, 7), 2, 3}}}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("3 accepted drafts"));
  // Drafts without the token after them.
  s = h.sched().UpdateFromOutput({{{.id = a, .accepted_drafts = {4}}}});
  EXPECT_THAT(s.message(), HasSubstr("without the token after them"));
  s = h.sched().UpdateFromOutput({{{.id = a, .token = 1, .accepted_drafts = {-4}}}});
  EXPECT_THAT(s.message(), HasSubstr("negative accepted draft"));
  // Nothing changed: a good answer still goes through.
  ASSERT_TRUE(h.sched().UpdateFromOutput({{{.id = a, .token = 9, .accepted_drafts = {8, 7}}}}).ok());
  EXPECT_EQ(h.sched().Info(a)->num_computed, 9);
  EXPECT_EQ(h.sched().Info(a)->num_output_tokens, 4);
  EXPECT_TRUE(h.sched().CheckInvariants().ok());
}

}  // namespace
}  // namespace duet::sched
