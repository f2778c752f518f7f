// The scheduler driven by hand-written step results (the Harness answers with FakeToken and
// checks every plan: budgets, block-table coverage, pool accounting, expected tokens).
#include "common/sched/scheduler.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/sched/sched_test_util.h"

namespace duet::sched {
namespace {

using ::duet::sched::testing::FakePrompt;
using ::duet::sched::testing::Harness;
using ::duet::sched::testing::SmallConfig;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::vector<std::string> DecodeIds(const SchedulerOutput& plan) {
  std::vector<std::string> ids;
  for (const DecodeEntry& d : plan.decodes) ids.push_back(d.id.value());
  return ids;
}

std::vector<std::string> PrefillIds(const SchedulerOutput& plan) {
  std::vector<std::string> ids;
  for (const PrefillChunk& c : plan.prefills) ids.push_back(c.id.value());
  return ids;
}

void ExpectAllFree(Harness& h) {
  EXPECT_FALSE(h.sched().has_requests());
  EXPECT_EQ(h.blocks().num_free(), h.blocks().num_blocks());
  EXPECT_EQ(h.sched().num_free_tail_slots(), h.sched().config().max_sequences);
}

TEST(SchedulerConfigTest, ValidateNamesTheBadField) {
  EXPECT_TRUE(SmallConfig(Role::kColocated).Validate().ok());
  SchedulerConfig c = SmallConfig(Role::kColocated);
  c.block_size = 0;
  EXPECT_THAT(c.Validate().message(), HasSubstr("block_size must be positive, got 0"));
  c = SmallConfig(Role::kColocated);
  c.max_sequences = -1;
  EXPECT_THAT(c.Validate().message(), HasSubstr("max_sequences"));
  c = SmallConfig(Role::kColocated);
  c.max_num_batched_tokens = 4;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.Validate().message(), HasSubstr("at least max_num_seqs (8)"));
  EXPECT_EQ(RoleName(Role::kDecode), "decode");
  EXPECT_EQ(FinishReasonName(FinishReason::kResourceExhausted), "resource_exhausted");
}

TEST(SchedulerTest, ArrivalsJoinTheNextStepAndFinishedRequestsLeaveAtOnce) {
  Harness h(SmallConfig(Role::kColocated), 64);
  ASSERT_TRUE(h.Add("a", 5, 3).ok());
  SchedulerOutput p1 = h.Step();
  EXPECT_THAT(PrefillIds(p1), ElementsAre("a"));
  EXPECT_TRUE(p1.prefills[0].completes_prompt);
  EXPECT_THAT(DecodeIds(p1), IsEmpty());

  ASSERT_TRUE(h.Add("b", 6, 2).ok());
  SchedulerOutput p2 = h.sched().Schedule();
  EXPECT_THAT(DecodeIds(p2), ElementsAre("a"));
  EXPECT_THAT(PrefillIds(p2), ElementsAre("b"));
  // Arrives while the plan is outstanding: joins the step after.
  ASSERT_TRUE(h.Add("c", 3, 1).ok());
  StepResult r2{{{.id = RequestId("a"), .token = 11}, {.id = RequestId("b"), .token = 12}}};
  ASSERT_TRUE(h.sched().UpdateFromOutput(r2).ok());
  EXPECT_THAT(h.sched().TakeFinished(), IsEmpty());
  EXPECT_EQ(h.sched().Info(RequestId("a"))->num_output_tokens, 2);

  SchedulerOutput p3 = h.sched().Schedule();
  EXPECT_THAT(DecodeIds(p3), ElementsAre("a", "b"));
  EXPECT_THAT(PrefillIds(p3), ElementsAre("c"));
  EXPECT_EQ(p3.decodes[0].token, 11);  // the last sampled token runs next
  StepResult r3{{{.id = RequestId("a"), .token = 21},
                 {.id = RequestId("b"), .token = 22},
                 {.id = RequestId("c"), .token = 23}}};
  ASSERT_TRUE(h.sched().UpdateFromOutput(r3).ok());
  // a and b reach max_tokens, c has max_tokens 1: all leave in this update.
  std::vector<FinishedRequest> done = h.sched().TakeFinished();
  ASSERT_EQ(done.size(), 3u);
  for (const FinishedRequest& f : done) EXPECT_EQ(f.reason, FinishReason::kLength) << f.id;
  EXPECT_EQ(done[0].id, RequestId("a"));
  EXPECT_THAT(done[0].output_tokens, ElementsAre(testing::FakeToken(RequestId("a"), 5), 11, 21));
  EXPECT_THAT(done[1].output_tokens, ElementsAre(12, 22));
  EXPECT_THAT(done[2].output_tokens, ElementsAre(23));
  EXPECT_EQ(h.sched().num_running(), 0);
  ExpectAllFree(h);
  SchedulerOutput p4 = h.sched().Schedule();
  EXPECT_TRUE(p4.empty());
  EXPECT_TRUE(h.sched().UpdateFromOutput({}).ok());
}

TEST(SchedulerTest, BudgetsHoldEveryStepAndAreUsed) {
  SchedulerConfig config = SmallConfig(Role::kColocated);
  config.max_num_seqs = 3;
  config.max_num_batched_tokens = 20;
  config.max_prefill_chunk_tokens = 8;
  Harness h(config, 200);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(h.Add("r" + std::to_string(i), 20 + (i * 7) % 40, 1 + (i * 3) % 10).ok());
  }
  int64_t max_items = 0, max_tokens = 0;
  while (h.sched().has_requests()) {
    SchedulerOutput plan = h.Step();  // CheckPlan enforces the budgets on every step
    EXPECT_LE(h.sched().num_running(), 3);
    max_items = std::max<int64_t>(max_items, plan.decodes.size() + plan.prefills.size());
    max_tokens = std::max(max_tokens, plan.num_scheduled_tokens());
    ASSERT_LT(h.steps, 500);
  }
  EXPECT_EQ(max_items, 3);
  EXPECT_EQ(max_tokens, 20);
  for (const auto& [id, f] : h.finished) {
    EXPECT_EQ(f.reason, FinishReason::kLength);
    EXPECT_EQ(f.output_tokens, h.ExpectedOutput(id, f.output_tokens.size()));
  }
  EXPECT_EQ(h.finished.size(), 10u);
  EXPECT_EQ(h.sched().num_preemptions(), 0);
  ExpectAllFree(h);
}

// A 1000-token prompt is chunked (64 per step) while 10-token prompts complete in the step
// they arrive, or the next one when the step's budget is spent.
TEST(SchedulerTest, ChunkedPrefillDoesNotStallShortPrompts) {
  for (Role role : {Role::kColocated, Role::kPrefill}) {
    SCOPED_TRACE(std::string(RoleName(role)));
    SchedulerConfig config{.role = role,
                           .max_num_seqs = 16,
                           .max_num_batched_tokens = 128,
                           .max_prefill_chunk_tokens = 64,
                           .block_size = 16,
                           .max_sequences = 16};
    Harness h(config, 1000);
    ASSERT_TRUE(h.Add("long", 1000, 4).ok());
    std::map<std::string, int64_t> arrived;
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(h.Add("s" + std::to_string(i), 10, 4).ok());
      arrived["s" + std::to_string(i)] = 1;
    }
    std::map<std::string, int64_t> completed;
    while (h.sched().has_requests()) {
      if (h.steps == 2) {
        for (int i = 5; i < 11; ++i) {
          ASSERT_TRUE(h.Add("s" + std::to_string(i), 10, 4).ok());
          arrived["s" + std::to_string(i)] = 3;
        }
      }
      SchedulerOutput plan = h.Step();
      for (const PrefillChunk& c : plan.prefills) {
        if (c.completes_prompt) completed[c.id.value()] = h.steps;
        if (c.id.value() == "long") {
          EXPECT_EQ(c.tokens.size(), c.completes_prompt ? 1000u - 15 * 64 : 64u);
        }
      }
      ASSERT_LT(h.steps, 100);
    }
    for (const auto& [id, step] : arrived) EXPECT_LE(completed.at(id), step + 1) << id;
    EXPECT_EQ(completed.at("s0"), 1);
    EXPECT_EQ(completed.at("long"), 16);  // ceil(1000 / 64)
    const FinishReason want =
        role == Role::kPrefill ? FinishReason::kPrefillDone : FinishReason::kLength;
    EXPECT_EQ(h.finished.at(RequestId("long")).reason, want);
    EXPECT_EQ(h.finished.size(), 12u);
    ExpectAllFree(h);
  }
}

TEST(SchedulerTest, PreemptsTheLatestArrivalAndRequeuesItForRecompute) {
  SchedulerConfig config = SmallConfig(Role::kColocated);
  Harness h(config, 6);
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(h.Add(id, 8, 10).ok());
  SchedulerOutput p1 = h.Step();
  EXPECT_THAT(PrefillIds(p1), ElementsAre("a", "b", "c"));
  EXPECT_EQ(h.blocks().num_free(), 0);
  // Position 8 needs a third block for each: c (the latest) is preempted for a and b.
  SchedulerOutput p2 = h.Step();
  EXPECT_THAT(DecodeIds(p2), ElementsAre("a", "b"));
  EXPECT_THAT(PrefillIds(p2), IsEmpty());  // no admissions in a step that preempted
  EXPECT_THAT(p2.preempted, IsEmpty());    // requeued, not reported, on a colocated node
  std::optional<RequestInfo> c = h.sched().Info(RequestId("c"));
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->state, RequestState::kWaiting);
  EXPECT_EQ(c->num_computed, 0);
  EXPECT_EQ(c->num_tokens, 9);  // recomputes its prompt and first token
  EXPECT_EQ(c->num_output_tokens, 1);
  EXPECT_EQ(c->num_preemptions, 1);
  EXPECT_EQ(h.sched().num_waiting(), 1);
  EXPECT_EQ(h.sched().num_pending_prefill_tokens(), 9);
  EXPECT_EQ(h.sched().num_preemptions(), 1);
  h.RunUntilIdle(200);
  for (const char* id : {"a", "b", "c"}) {
    const FinishedRequest& f = h.finished.at(RequestId(id));
    EXPECT_EQ(f.reason, FinishReason::kLength);
    EXPECT_EQ(f.output_tokens, h.ExpectedOutput(RequestId(id), 10)) << id;
  }
  EXPECT_GE(h.finished.at(RequestId("c")).num_preemptions, 1);
  EXPECT_EQ(h.finished.at(RequestId("a")).num_preemptions, 0);
  ExpectAllFree(h);
}

TEST(SchedulerTest, PriorityOrdersAdmissionAndPreemption) {
  Harness h(SmallConfig(Role::kColocated), 6);
  ASSERT_TRUE(h.Add("a", 8, 10).ok());
  ASSERT_TRUE(h.Add("b", 8, 10).ok());
  ASSERT_TRUE(h.Add("vip", 8, 10, /*priority=*/-1).ok());
  EXPECT_THAT(PrefillIds(h.Step()), ElementsAre("vip", "a", "b"));
  SchedulerOutput p2 = h.Step();
  EXPECT_THAT(DecodeIds(p2), ElementsAre("vip", "a"));  // b, the least important, is preempted
  EXPECT_EQ(h.sched().Info(RequestId("b"))->state, RequestState::kWaiting);
}

// Under KV pressure a request's final tokens are those of the run without pressure: preemption
// by recompute re-prefills prompt + generated tokens and the output continues unchanged.
TEST(SchedulerTest, PreemptionByRecomputeMatchesTheRunWithoutPressure) {
  auto run = [](int64_t num_blocks, int64_t* preemptions) {
    SchedulerConfig config = SmallConfig(Role::kColocated);
    config.max_prefill_chunk_tokens = 6;
    Harness h(config, num_blocks);
    // "s" stops (node's stop decision) when it would sample its 8th token.
    h.stop_fn = [](const RequestId& id, int64_t pos, int32_t) {
      return id.value() == "s" && pos == 10 + 7;
    };
    for (int i = 0; i < 5; ++i) EXPECT_TRUE(h.Add("r" + std::to_string(i), 10 + i, 14).ok());
    EXPECT_TRUE(h.Add("s", 10, 20).ok());
    h.RunUntilIdle(2000);
    ExpectAllFree(h);
    *preemptions = h.sched().num_preemptions();
    std::map<std::string, std::pair<FinishReason, std::vector<int32_t>>> out;
    for (const auto& [id, f] : h.finished) out[id.value()] = {f.reason, f.output_tokens};
    return out;
  };
  int64_t relaxed_preemptions = 0, tight_preemptions = 0;
  const auto relaxed = run(1000, &relaxed_preemptions);
  const auto tight = run(8, &tight_preemptions);  // 32 positions for six ~25-position sequences
  EXPECT_EQ(relaxed_preemptions, 0);
  EXPECT_GT(tight_preemptions, 3);
  EXPECT_EQ(tight, relaxed);
  ASSERT_EQ(relaxed.size(), 6u);
  EXPECT_EQ(relaxed.at("s").first, FinishReason::kStop);
  EXPECT_EQ(relaxed.at("s").second.size(), 8u);
  EXPECT_EQ(relaxed.at("r3").first, FinishReason::kLength);
  EXPECT_EQ(relaxed.at("r3").second.size(), 14u);
}

TEST(SchedulerTest, AbortsWaitingPrefillingDecodingAndInFlightRequests) {
  SchedulerConfig config = SmallConfig(Role::kColocated);
  config.max_num_seqs = 3;
  config.max_prefill_chunk_tokens = 8;
  Harness h(config, 100);
  ASSERT_TRUE(h.Add("dec", 4, 50).ok());
  ASSERT_TRUE(h.Add("pre", 100, 5).ok());
  ASSERT_TRUE(h.Add("fly", 4, 50).ok());
  ASSERT_TRUE(h.Add("wait", 4, 5).ok());
  h.Step();
  h.Step();
  EXPECT_EQ(h.sched().Info(RequestId("dec"))->num_output_tokens, 2);
  EXPECT_EQ(h.sched().Info(RequestId("pre"))->num_computed, 16);
  EXPECT_EQ(h.sched().Info(RequestId("wait"))->state, RequestState::kWaiting);
  for (const char* id : {"dec", "pre", "wait"}) {
    EXPECT_TRUE(h.sched().Abort(RequestId(id)).ok());
    EXPECT_EQ(h.sched().Abort(RequestId(id)).code(),
              absl::StatusCode::kNotFound);  // no double free
  }
  EXPECT_EQ(h.sched().Abort(RequestId("never")).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(testing::TotalRefs(h.blocks()), h.sched().num_block_refs());
  EXPECT_EQ(h.sched().num_running(), 1);
  // Aborted between Schedule and UpdateFromOutput: its output is ignored.
  SchedulerOutput plan = h.sched().Schedule();
  ASSERT_THAT(DecodeIds(plan), ElementsAre("fly"));
  ASSERT_TRUE(h.sched().Abort(RequestId("fly")).ok());
  EXPECT_TRUE(h.sched().UpdateFromOutput({{{.id = RequestId("fly"), .token = 1}}}).ok());
  EXPECT_THAT(h.sched().TakeFinished(), IsEmpty());
  EXPECT_TRUE(h.finished.empty());
  ExpectAllFree(h);
  // The same id may come back; a stale plan entry never applies to it.
  ASSERT_TRUE(h.Add("fly", 4, 2).ok());
  h.RunUntilIdle(10);
  EXPECT_EQ(h.finished.at(RequestId("fly")).output_tokens, h.ExpectedOutput(RequestId("fly"), 2));
}

TEST(SchedulerTest, RequestsLargerThanThePoolFailCleanly) {
  Harness h(SmallConfig(Role::kColocated), 4);  // 16 positions
  absl::Status s = h.Add("huge", 17, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("needs 5 KV blocks of 4 tokens"));
  EXPECT_THAT(s.message(), HasSubstr("the pool has 4"));
  EXPECT_FALSE(h.sched().has_requests());
  // Fits as a prompt, outgrows the pool while decoding: finishes instead of looping, without
  // preempting its neighbour.
  ASSERT_TRUE(h.Add("grows", 14, 10).ok());
  ASSERT_TRUE(h.Add("small", 1, 4).ok());
  h.RunUntilIdle(50);
  const FinishedRequest& f = h.finished.at(RequestId("grows"));
  EXPECT_EQ(f.reason, FinishReason::kResourceExhausted);
  EXPECT_THAT(f.detail, HasSubstr("needs 5 KV blocks of 4 tokens for 17 positions"));
  EXPECT_EQ(f.output_tokens, h.ExpectedOutput(RequestId("grows"), f.output_tokens.size()));
  EXPECT_EQ(h.finished.at(RequestId("small")).reason, FinishReason::kLength);
  ExpectAllFree(h);

  SchedulerConfig no_preempt = SmallConfig(Role::kColocated);
  no_preempt.enable_preemption = false;
  Harness g(no_preempt, 4);
  s = g.Add("worst", 10, 8);  // 17 positions at worst
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("preemption is disabled"));
  EXPECT_TRUE(g.Add("fits", 10, 7).ok());
}

TEST(SchedulerTest, WithoutPreemptionAdmitsOnlyWhatIsGuaranteedToFit) {
  SchedulerConfig config = SmallConfig(Role::kColocated);
  config.enable_preemption = false;
  Harness h(config, 10);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(h.Add("r" + std::to_string(i), 8, 9).ok());  // 4 blocks
  while (h.sched().has_requests()) {
    h.Step();
    EXPECT_LE(h.sched().num_running(), 2);
    ASSERT_LT(h.steps, 200);
  }
  EXPECT_EQ(h.sched().num_preemptions(), 0);
  for (const auto& [id, f] : h.finished) EXPECT_EQ(f.output_tokens, h.ExpectedOutput(id, 9));
  EXPECT_EQ(h.finished.size(), 5u);
  ExpectAllFree(h);
}

TEST(SchedulerTest, TailSlotsLimitRunningSequences) {
  SchedulerConfig config = SmallConfig(Role::kColocated);
  config.max_sequences = 2;
  Harness h(config, 100);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(h.Add("r" + std::to_string(i), 5, 3).ok());
  while (h.sched().has_requests()) {
    h.Step();
    EXPECT_LE(h.sched().num_running(), 2);
    ASSERT_LT(h.steps, 100);
  }
  EXPECT_EQ(h.finished.size(), 6u);
  EXPECT_EQ(h.sched().num_preemptions(), 0);
  ExpectAllFree(h);
}

TEST(SchedulerTest, RecordsArrivalQueueAndFinishTimes) {
  Harness h(SmallConfig(Role::kColocated), 100);
  const absl::Time t0 = h.clock().Now();
  ASSERT_TRUE(h.Add("a", 4, 2).ok());
  h.clock().Advance(absl::Milliseconds(5));
  h.RunUntilIdle(10);  // 1 ms per step: scheduled at t0 + 5 ms, finished at t0 + 6 ms
  const RequestTimes& t = h.finished.at(RequestId("a")).times;
  EXPECT_EQ(t.arrival, t0);
  ASSERT_TRUE(t.first_scheduled.has_value());
  EXPECT_EQ(*t.first_scheduled - t.arrival, absl::Milliseconds(5));
  EXPECT_EQ(t.finished, t0 + absl::Milliseconds(6));
}

TEST(SchedulerTest, PrefillNodeFinishesAtPromptEndAndKeepsRetainedBlocks) {
  SchedulerConfig config = SmallConfig(Role::kPrefill);
  config.max_num_batched_tokens = 16;
  config.max_prefill_chunk_tokens = 8;
  Harness h(config, 100);
  h.retain_completed = true;  // the KV transfer still reads the blocks after the prompt ends
  ASSERT_TRUE(h.Add("a", 20, 100).ok());
  ASSERT_TRUE(h.Add("b", 3, 100).ok());
  ASSERT_TRUE(h.Add("one", 2, 1).ok());
  SchedulerOutput p1 = h.Step();
  EXPECT_THAT(PrefillIds(p1), ElementsAre("a", "b", "one"));
  EXPECT_EQ(p1.prefills[1].tokens.size(), 3u);
  EXPECT_EQ(h.finished.at(RequestId("b")).reason, FinishReason::kPrefillDone);
  EXPECT_THAT(h.finished.at(RequestId("b")).output_tokens,
              ElementsAre(testing::FakeToken(RequestId("b"), 3)));
  EXPECT_EQ(h.finished.at(RequestId("one")).reason, FinishReason::kLength);
  h.RunUntilIdle(10);
  EXPECT_EQ(h.steps, 3);  // a: 8 + 8 + 4
  EXPECT_EQ(h.finished.at(RequestId("a")).reason, FinishReason::kPrefillDone);
  EXPECT_EQ(h.blocks().num_used(), 5 + 1 + 1);  // still retained by the "transfer"
  h.ReleaseRetained();
  ExpectAllFree(h);
  // A prefill node samples the first token itself; the scheduler does not need it.
  Harness g(config, 100);
  ASSERT_TRUE(g.Add("x", 4, 10).ok());
  g.sched().Schedule();
  ASSERT_TRUE(g.sched().UpdateFromOutput({}).ok());
  std::vector<FinishedRequest> done = g.sched().TakeFinished();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].reason, FinishReason::kPrefillDone);
  EXPECT_THAT(done[0].output_tokens, IsEmpty());
  EXPECT_EQ(g.sched().AddRunning({.id = RequestId("y"), .prompt = {1}}, {}).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(SchedulerTest, DecodeNodeRunsAddedSequencesAndReportsPreempted) {
  SchedulerConfig config = SmallConfig(Role::kDecode);
  Harness h(config, 6);
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(h.AddRunning(id, 7, 10).ok());  // 2 blocks
  EXPECT_EQ(h.blocks().num_free(), 0);
  SchedulerOutput p1 = h.Step();  // position 7: still in each second block
  EXPECT_THAT(DecodeIds(p1), ElementsAre("a", "b", "c"));
  EXPECT_EQ(p1.decodes[0].num_cached, 7);
  SchedulerOutput p2 = h.Step();  // position 8: c gives its blocks to a and b
  EXPECT_THAT(DecodeIds(p2), ElementsAre("a", "b"));
  ASSERT_EQ(p2.preempted.size(), 1u);
  EXPECT_EQ(p2.preempted[0].id, RequestId("c"));
  EXPECT_EQ(p2.preempted[0].num_prompt_tokens, 7);
  EXPECT_EQ(p2.preempted[0].num_output_tokens, 2);
  EXPECT_EQ(p2.preempted[0].tokens.size(), 9u);
  EXPECT_EQ(h.sched().num_running(), 2);
  EXPECT_EQ(h.sched().num_preemptions(), 1);
  // The "router" resumes preempted sequences (prefill elsewhere) once blocks are free.
  std::vector<Preempted> to_resume;
  size_t reported = h.preempted.size();
  to_resume.insert(to_resume.end(), h.preempted.begin(), h.preempted.end());
  while (h.sched().has_requests() || !to_resume.empty()) {
    if (!to_resume.empty() && h.Resume(to_resume.front(), 10).ok()) {
      to_resume.erase(to_resume.begin());
    }
    h.Step();
    to_resume.insert(to_resume.end(), h.preempted.begin() + static_cast<long>(reported),
                     h.preempted.end());
    reported = h.preempted.size();
    ASSERT_LT(h.steps, 200);
  }
  for (const char* id : {"a", "b", "c"}) {
    const FinishedRequest& f = h.finished.at(RequestId(id));
    EXPECT_EQ(f.reason, FinishReason::kLength);
    EXPECT_EQ(f.output_tokens, h.ExpectedOutput(RequestId(id), 10)) << id;
  }
  ExpectAllFree(h);
}

TEST(SchedulerTest, AddRunningValidatesAndTakesOwnership) {
  SchedulerConfig config = SmallConfig(Role::kDecode);
  config.max_num_seqs = 3;
  config.max_sequences = 2;
  kv::BlockPool blocks(10);
  kv::BlockPool slots(2);
  FakeClock clock;
  Scheduler s(config, &blocks, &clock, &slots);
  const std::vector<int32_t> prompt = FakePrompt(RequestId("x"), 6);
  auto spec = [&](const char* id) {
    return RequestSpec{.id = RequestId(id), .prompt = prompt, .output = {5}, .max_tokens = 4};
  };
  std::vector<int32_t> two = *blocks.Allocate(2);  // 6 positions of KV
  EXPECT_EQ(s.AddRequest(spec("x")).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.AddRunning(spec("x"), {two[0]}).message(), HasSubstr("cannot hold its KV for 6"));
  EXPECT_THAT(s.AddRunning(spec("x"), {two[0], two[0]}).message(), HasSubstr("appears twice"));
  EXPECT_EQ(s.AddRunning(spec("x"), {two[0], 7}).code(), absl::StatusCode::kFailedPrecondition);
  RequestSpec done = spec("x");
  done.max_tokens = 1;
  EXPECT_EQ(s.AddRunning(done, two).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.AddRunning(spec("x"), two, /*tail_slot=*/1).code(),
            absl::StatusCode::kFailedPrecondition);  // slot 1 is not held
  EXPECT_EQ(blocks.num_used(), 2);                   // nothing taken by the failures
  EXPECT_EQ(blocks.ref_count(two[0]), 1);

  const int32_t slot = (*slots.Allocate(1))[0];
  ASSERT_TRUE(s.AddRunning(spec("x"), two, slot).ok());  // adopts the caller's tail slot
  EXPECT_EQ(s.Info(RequestId("x"))->tail_slot, slot);
  EXPECT_EQ(s.AddRunning(spec("x"), *blocks.Allocate(2)).code(), absl::StatusCode::kAlreadyExists);
  std::vector<int32_t> w = *blocks.Allocate(2);
  EXPECT_THAT(s.AddRunning(spec("w"), w, slot).message(), HasSubstr("belongs to x"));
  ASSERT_TRUE(blocks.Release(w).ok());
  std::vector<int32_t> more = *blocks.Allocate(3);  // a reservation may cover positions to come
  ASSERT_TRUE(s.AddRunning(spec("y"), more).ok());
  EXPECT_EQ(slots.num_free(), 0);
  std::vector<int32_t> z = *blocks.Allocate(2);
  absl::Status st = s.AddRunning(spec("z"), z);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("tail slots"));
  ASSERT_TRUE(blocks.Release(z).ok());
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants();
  // Aborting releases the adopted blocks and slots; the earlier ALREADY_EXISTS pair leaked to
  // the test, not to the scheduler.
  ASSERT_TRUE(s.Abort(RequestId("x")).ok());
  ASSERT_TRUE(s.Abort(RequestId("y")).ok());
  EXPECT_EQ(blocks.num_used(), 2);
  EXPECT_EQ(slots.num_free(), 2);
}

TEST(SchedulerTest, AddRunningHonoursMaxNumSeqs) {
  SchedulerConfig config = SmallConfig(Role::kDecode);
  config.max_num_seqs = 1;
  kv::BlockPool blocks(8);
  FakeClock clock;
  Scheduler s(config, &blocks, &clock);
  ASSERT_TRUE(
      s.AddRunning({.id = RequestId("a"), .prompt = {1, 2}, .max_tokens = 3}, *blocks.Allocate(1))
          .ok());
  std::vector<int32_t> b = *blocks.Allocate(1);
  absl::Status st = s.AddRunning({.id = RequestId("b"), .prompt = {1, 2}, .max_tokens = 3}, b);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("max_num_seqs = 1"));
  // An empty output: KV for all but the last prompt token, which is the first decode input.
  SchedulerOutput plan = s.Schedule();
  ASSERT_EQ(plan.decodes.size(), 1u);
  EXPECT_EQ(plan.decodes[0].num_cached, 1);
  EXPECT_EQ(plan.decodes[0].token, 2);
  ASSERT_TRUE(s.UpdateFromOutput({{{.id = RequestId("a"), .token = 9}}}).ok());
  EXPECT_EQ(s.Info(RequestId("a"))->num_output_tokens, 1);
}

TEST(SchedulerTest, UpdateFromOutputRejectsBadResultsWithoutChangingState) {
  SchedulerConfig config = SmallConfig(Role::kColocated);
  config.max_prefill_chunk_tokens = 4;
  Harness h(config, 100);
  EXPECT_EQ(h.sched().UpdateFromOutput({}).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(h.Add("d", 2, 10).ok());
  h.Step();  // d decodes from now on
  ASSERT_TRUE(h.Add("p", 10, 10).ok());
  SchedulerOutput plan = h.sched().Schedule();
  ASSERT_THAT(DecodeIds(plan), ElementsAre("d"));
  ASSERT_THAT(PrefillIds(plan), ElementsAre("p"));
  ASSERT_FALSE(plan.prefills[0].completes_prompt);
  const RequestId d("d"), p("p");
  auto code = [&](StepResult r) { return h.sched().UpdateFromOutput(r).code(); };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code({}), kInvalid);  // the decode entry's token is missing
  EXPECT_THAT(h.sched().UpdateFromOutput({}).message(), HasSubstr("needs a sampled token"));
  EXPECT_EQ(code({{{.id = d, .token = 1}, {.id = RequestId("zz"), .token = 1}}}), kInvalid);
  EXPECT_EQ(code({{{.id = d, .token = 1}, {.id = p, .token = 1}}}), kInvalid);
  EXPECT_EQ(code({{{.id = d, .token = 1}, {.id = d, .token = 1}}}), kInvalid);
  EXPECT_EQ(code({{{.id = d, .token = -3}}}), kInvalid);
  EXPECT_EQ(code({{{.id = d, .token = 1, .finish = FinishReason::kPrefillDone}}}), kInvalid);
  EXPECT_TRUE(h.sched().step_outstanding());
  EXPECT_EQ(h.sched().Info(p)->num_computed, 0);
  EXPECT_EQ(h.sched().Info(d)->num_output_tokens, 1);
  // A node may end a request without a token (an engine error, say).
  ASSERT_TRUE(h.sched().UpdateFromOutput({{{.id = d, .finish = FinishReason::kAborted}}}).ok());
  std::vector<FinishedRequest> done = h.sched().TakeFinished();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].reason, FinishReason::kAborted);
  EXPECT_EQ(h.sched().Info(p)->num_computed, 4);
}

TEST(SchedulerTest, AddRequestValidatesItsSpec) {
  Harness h(SmallConfig(Role::kColocated), 100);
  Scheduler& s = h.sched();
  EXPECT_EQ(s.AddRequest({.id = RequestId("e"), .max_tokens = 2}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.AddRequest({.id = RequestId("n"), .prompt = {1, -2}, .max_tokens = 2}).message(),
              HasSubstr("negative token id -2"));
  EXPECT_THAT(
      s.AddRequest({.id = RequestId("m"), .prompt = {1}, .output = {3}, .max_tokens = 1}).message(),
      HasSubstr("leaves nothing to generate"));
  ASSERT_TRUE(s.AddRequest({.id = RequestId("ok"), .prompt = {1}, .max_tokens = 1}).ok());
  EXPECT_EQ(s.AddRequest({.id = RequestId("ok"), .prompt = {1}, .max_tokens = 1}).code(),
            absl::StatusCode::kAlreadyExists);
  // A resumed request prefills prompt + output and continues its output.
  ASSERT_TRUE(
      s.AddRequest({.id = RequestId("res"), .prompt = {1, 2}, .output = {3}, .max_tokens = 2})
          .ok());
  EXPECT_EQ(s.num_pending_prefill_tokens(), 1 + 3);
  SchedulerOutput plan = s.Schedule();
  ASSERT_EQ(plan.prefills.size(), 2u);
  EXPECT_THAT(plan.prefills[1].tokens, ElementsAre(1, 2, 3));
  ASSERT_TRUE(s.UpdateFromOutput(
                   {{{.id = RequestId("ok"), .token = 4}, {.id = RequestId("res"), .token = 5}}})
                  .ok());
  std::vector<FinishedRequest> done = s.TakeFinished();
  ASSERT_EQ(done.size(), 2u);
  EXPECT_THAT(done[1].output_tokens, ElementsAre(3, 5));
  EXPECT_EQ(done[1].reason, FinishReason::kLength);
}

TEST(SchedulerDeathTest, ScheduleTwiceWithoutUpdateCrashes) {
  Harness h(SmallConfig(Role::kColocated), 10);
  h.sched().Schedule();
  EXPECT_DEATH(h.sched().Schedule(), "called again before UpdateFromOutput");
}

}  // namespace
}  // namespace duet::sched
