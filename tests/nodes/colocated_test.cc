// Run on a colocated node (prefill chunks and decode steps in one loop) equals a single-process
// run, alone, batched, and when a pool too small for everyone makes the scheduler preempt and
// recompute; a decode node that runs out of blocks preempts a sequence and ends its stream with
// a retriable error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/rpc/status_convert.h"
#include "tests/nodes/node_test_util.h"

namespace duet::nodes_test {
namespace {

using ::testing::HasSubstr;

DecodeSetup Colocated(int64_t num_blocks) {
  DecodeSetup s;
  s.dtype = kv::CacheDtype::kFp8E4M3;
  s.num_blocks = num_blocks;
  s.options.role = sched::Role::kColocated;
  s.options.node_id = "colocated-0";
  s.options.max_num_seqs = 4;
  s.options.max_num_batched_tokens = 32;
  s.options.prefill_chunk_tokens = 20;  // chunks end inside blocks
  return s;
}

v1::RunRequest RunFor(const std::string& id, const std::vector<int32_t>& prompt,
                      const v1::SamplingParams& sampling) {
  v1::RunRequest r;
  r.set_request_id(id);
  for (int32_t t : prompt) r.add_token_ids(t);
  *r.mutable_sampling() = sampling;
  return r;
}

struct RunJob {
  std::vector<int32_t> prompt;
  v1::SamplingParams sampling;
  std::vector<int32_t> want;
  StreamResult got;
};

// Runs every job concurrently and checks each against its solo run.
void RunAll(DecodeHarness& node, std::vector<RunJob>& jobs) {
  std::vector<std::thread> threads;
  for (size_t i = 0; i < jobs.size(); ++i) {
    threads.emplace_back([&, i] {
      jobs[i].got = TokenStreamCall::Run(*node.stub, RunFor(absl::StrCat("run-", i), jobs[i].prompt,
                                                            jobs[i].sampling))
                        ->ReadAll();
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < jobs.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    EXPECT_TRUE(jobs[i].got.status.ok()) << jobs[i].got.status.error_message();
    EXPECT_EQ(jobs[i].got.tokens, jobs[i].want);
    EXPECT_EQ(jobs[i].got.usage.prompt_tokens(), static_cast<int64_t>(jobs[i].prompt.size()));
    EXPECT_EQ(jobs[i].got.usage.completion_tokens(), static_cast<int64_t>(jobs[i].want.size()));
  }
}

RunJob Job(int64_t length, int32_t max_tokens, uint32_t seed) {
  RunJob j;
  j.prompt = Prompt(length, seed);
  j.sampling = Greedy(max_tokens);
  j.want = SoloRun("cpu", kv::CacheDtype::kFp8E4M3, j.prompt, j.sampling);
  return j;
}

TEST(ColocatedTest, RunEqualsASingleProcessRun) {
  std::unique_ptr<DecodeHarness> node = StartDecode(Colocated(64));
  ASSERT_NE(node, nullptr);
  std::vector<RunJob> jobs = {Job(45, 10, 1)};
  RunAll(*node, jobs);
  EXPECT_EQ(jobs[0].got.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(AwaitDecodeIdle(*node));
}

TEST(ColocatedTest, ConcurrentRunsEachEqualTheirSoloRun) {
  std::unique_ptr<DecodeHarness> node = StartDecode(Colocated(64));
  ASSERT_NE(node, nullptr);
  std::vector<RunJob> jobs = {Job(7, 18, 2), Job(50, 9, 3), Job(33, 15, 4), Job(16, 12, 5)};
  RunAll(*node, jobs);
  EXPECT_TRUE(AwaitDecodeIdle(*node));
}

// Four sequences that need up to 6 blocks each share 12: the scheduler preempts and recomputes,
// and every output still equals its solo run.
TEST(ColocatedTest, PreemptedRunsContinueUnchanged) {
  std::unique_ptr<DecodeHarness> node = StartDecode(Colocated(12));
  ASSERT_NE(node, nullptr);
  std::vector<RunJob> jobs = {Job(30, 60, 6), Job(25, 60, 7), Job(40, 50, 8), Job(20, 70, 9)};
  RunAll(*node, jobs);
  EXPECT_GT(node->node->GetSnapshot().num_preemptions, 0);
  EXPECT_TRUE(AwaitDecodeIdle(*node));
}

TEST(ColocatedTest, CancellingRunFreesItsBlocks) {
  std::unique_ptr<DecodeHarness> node = StartDecode(Colocated(64));
  ASSERT_NE(node, nullptr);
  std::unique_ptr<TokenStreamCall> call =
      TokenStreamCall::Run(*node->stub, RunFor("run-x", Prompt(20, 1), Greedy(400)));
  StreamResult first;
  ASSERT_TRUE(call->ReadOne(&first));
  call->Cancel();
  EXPECT_EQ(call->ReadAll().status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(AwaitDecodeIdle(*node));
}

TEST(ColocatedTest, BadRunsAndReservationsGetPreciseStatuses) {
  std::unique_ptr<DecodeHarness> node = StartDecode(Colocated(64));
  ASSERT_NE(node, nullptr);
  v1::RunRequest empty = RunFor("run-e", {}, Greedy(3));
  EXPECT_EQ(TokenStreamCall::Run(*node->stub, empty)->ReadAll().status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::RunRequest bad_token = RunFor("run-t", {4, 999}, Greedy(3));
  const grpc::Status s = TokenStreamCall::Run(*node->stub, bad_token)->ReadAll().status;
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("token_ids[1] = 999"));
  v1::RunRequest other_model = RunFor("run-m", {4, 5}, Greedy(3));
  other_model.set_model_id("other");
  EXPECT_EQ(TokenStreamCall::Run(*node->stub, other_model)->ReadAll().status.error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  v1::ReserveResponse res;
  const grpc::Status reserve =
      CallReserve(*node->stub, ReserveFor("r-1", Prompt(10, 1), Greedy(3)), &res);
  EXPECT_EQ(reserve.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(reserve.error_message(), HasSubstr("Run"));
  EXPECT_TRUE(AwaitDecodeIdle(*node));
}

// A decode node whose pool cannot hold two growing sequences preempts one of them: its stream
// ends OK with a `preempted` event; the other finishes as if alone. Resumed the way the router
// does it -- prefill of prompt + tokens so far with num_resumed_tokens, reserved on the node
// again -- the preempted one continues to exactly the tokens it would have produced alone.
TEST(DecodeNodePreemptionTest, PreemptedSequenceResumesUnchanged) {
  DecodeSetup d;
  d.dtype = kv::CacheDtype::kFp8E4M3;
  d.num_blocks = 8;
  d.options.max_num_seqs = 4;
  std::unique_ptr<DecodeHarness> decode = StartDecode(d);
  ASSERT_NE(decode, nullptr);
  PrefillSetup p;
  p.options.max_num_seqs = 4;
  std::unique_ptr<PrefillHarness> prefill = StartPrefill(p);
  ASSERT_NE(prefill, nullptr);

  // Each needs all 8 blocks by its end (16 + 98 - 1 positions), so both cannot finish.
  struct Req {
    std::string id;
    std::vector<int32_t> prompt;
    v1::ReserveResponse reservation;
    std::unique_ptr<TokenStreamCall> stream;
    grpc::Status prefill;
    StreamResult got;
  };
  Req reqs[2];
  const v1::SamplingParams sampling = Greedy(98);
  for (int i = 0; i < 2; ++i) {
    reqs[i].id = absl::StrCat("r-", i);
    reqs[i].prompt = Prompt(16, 50 + i);
    ASSERT_TRUE(CallReserve(*decode->stub, ReserveFor(reqs[i].id, reqs[i].prompt, sampling),
                            &reqs[i].reservation)
                    .ok());
    reqs[i].stream = TokenStreamCall::StreamTokens(*decode->stub, reqs[i].id,
                                                   reqs[i].reservation.reservation_id());
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      v1::PrefillResponse out;
      reqs[i].prefill = CallPrefill(
          *prefill->stub,
          PrefillFor(reqs[i].id, reqs[i].prompt, sampling, decode->address, reqs[i].reservation),
          &out);
      reqs[i].got = reqs[i].stream->ReadAll();
    });
  }
  for (std::thread& t : threads) t.join();
  int preempted = 0;
  for (Req& r : reqs) {
    SCOPED_TRACE(r.id);
    EXPECT_TRUE(r.prefill.ok()) << r.prefill.error_message();
    ASSERT_TRUE(r.got.status.ok()) << r.got.status.error_message();
    const std::vector<int32_t> alone = SoloRun("cpu", kv::CacheDtype::kFp8E4M3, r.prompt, sampling);
    if (!r.got.preempted) {
      EXPECT_EQ(r.got.tokens, alone);
      continue;
    }
    ++preempted;
    EXPECT_EQ(r.got.finish, v1::FINISH_REASON_UNSPECIFIED);
    ASSERT_LT(r.got.tokens.size(), alone.size());
    ASSERT_FALSE(r.got.tokens.empty());
    ASSERT_TRUE(AwaitDecodeIdle(*decode));  // the other one has finished

    // Resume: the prompt plus every token streamed so far.
    std::vector<int32_t> resumed = r.prompt;
    resumed.insert(resumed.end(), r.got.tokens.begin(), r.got.tokens.end());
    const int32_t k = static_cast<int32_t>(r.got.tokens.size());
    const std::string id = r.id + "-resumed";
    v1::ReserveRequest reserve = ReserveFor(id, resumed, sampling);
    reserve.set_num_resumed_tokens(k);
    v1::ReserveResponse reservation;
    ASSERT_TRUE(CallReserve(*decode->stub, reserve, &reservation).ok());
    std::unique_ptr<TokenStreamCall> stream =
        TokenStreamCall::StreamTokens(*decode->stub, id, reservation.reservation_id());
    v1::PrefillRequest again = PrefillFor(id, resumed, sampling, decode->address, reservation);
    again.set_num_resumed_tokens(k);
    v1::PrefillResponse out;
    ASSERT_TRUE(CallPrefill(*prefill->stub, again, &out).ok());
    const StreamResult rest = stream->ReadAll();
    ASSERT_TRUE(rest.status.ok()) << rest.status.error_message();
    EXPECT_EQ(rest.finish, v1::FINISH_REASON_LENGTH);
    std::vector<int32_t> all = r.got.tokens;
    all.insert(all.end(), rest.tokens.begin(), rest.tokens.end());
    EXPECT_EQ(all, alone);
  }
  EXPECT_EQ(preempted, 1);
  EXPECT_TRUE(AwaitDecodeIdle(*decode));
}

// Bad resume counts are refused with INVALID_ARGUMENT naming the field, by both node kinds.
TEST(DecodeNodePreemptionTest, BadResumeCountsAreRefused) {
  std::unique_ptr<DecodeHarness> decode = StartDecode({});
  ASSERT_NE(decode, nullptr);
  std::unique_ptr<PrefillHarness> prefill = StartPrefill({});
  ASSERT_NE(prefill, nullptr);
  const std::vector<int32_t> prompt = Prompt(10, 3);
  for (int32_t bad : {-1, 10, 11}) {
    SCOPED_TRACE(bad);
    v1::ReserveRequest reserve = ReserveFor("bad-resume", prompt, Greedy(4));
    reserve.set_num_resumed_tokens(bad);
    v1::ReserveResponse reservation;
    const grpc::Status reserved = CallReserve(*decode->stub, reserve, &reservation);
    EXPECT_EQ(reserved.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(reserved.error_message(), HasSubstr("num_resumed_tokens"));

    v1::ReserveResponse fake;
    fake.set_reservation_id("none");
    fake.set_block_size(16);
    v1::PrefillRequest request = PrefillFor("bad-resume", prompt, Greedy(4), decode->address, fake);
    request.set_num_resumed_tokens(bad);
    v1::PrefillResponse out;
    const grpc::Status prefilled = CallPrefill(*prefill->stub, request, &out);
    EXPECT_EQ(prefilled.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(prefilled.error_message(), HasSubstr("num_resumed_tokens"));
  }
  // Resumed tokens that already end the completion (max_tokens 4, 5 resumed) are refused too.
  v1::ReserveRequest done = ReserveFor("done-resume", Prompt(10, 4), Greedy(4));
  done.set_num_resumed_tokens(5);
  v1::ReserveResponse reservation;
  EXPECT_EQ(CallReserve(*decode->stub, done, &reservation).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(AwaitDecodeIdle(*decode));
}

// A conversation on a colocated node: turn 2 (turn 1's prompt and reply plus a new message)
// reuses the cached KV of turn 1's prompt and generated tokens; outputs equal cache-off runs.
TEST(ColocatedNodeTest, NextTurnReusesTheCachedConversation) {
  std::unique_ptr<DecodeHarness> node = StartDecode(Colocated(64));
  ASSERT_NE(node, nullptr);
  const std::vector<int32_t> turn1 = Prompt(30, 77);
  const v1::SamplingParams sampling = Greedy(12);
  const StreamResult r1 = TokenStreamCall::Run(*node->stub, RunFor("t1", turn1, sampling))->ReadAll();
  ASSERT_TRUE(r1.status.ok()) << r1.status.error_message();
  EXPECT_EQ(r1.tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, turn1, sampling));
  EXPECT_EQ(r1.usage.cached_prompt_tokens(), 0);
  std::vector<int32_t> turn2 = turn1;
  turn2.insert(turn2.end(), r1.tokens.begin(), r1.tokens.end());
  const std::vector<int32_t> message = Prompt(9, 78);
  turn2.insert(turn2.end(), message.begin(), message.end());
  const StreamResult r2 = TokenStreamCall::Run(*node->stub, RunFor("t2", turn2, sampling))->ReadAll();
  ASSERT_TRUE(r2.status.ok()) << r2.status.error_message();
  EXPECT_EQ(r2.tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, turn2, sampling));
  // Turn 1 ran 30 + 11 positions: 2 full blocks of 16 are cached and reused.
  EXPECT_EQ(r2.usage.cached_prompt_tokens(), 32);
  EXPECT_EQ(r2.usage.prompt_tokens(), static_cast<int64_t>(turn2.size()));
  EXPECT_TRUE(AwaitDecodeIdle(*node));
}

}  // namespace
}  // namespace duet::nodes_test
