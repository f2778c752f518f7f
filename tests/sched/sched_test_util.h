// A fake node for scheduler tests: it answers every plan with deterministic "sampled" tokens,
// checks each plan against the config and the pools, and records what finished.
#ifndef DUET_TESTS_SCHED_SCHED_TEST_UTIL_H_
#define DUET_TESTS_SCHED_SCHED_TEST_UTIL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/base/clock.h"
#include "common/base/ids.h"
#include "common/kv/block_pool.h"
#include "common/sched/scheduler.h"

namespace duet::sched::testing {

// The token the fake model samples for request `id` at position `pos`: a function of the two
// only, so a request's output is the same whatever runs beside it and however often it is
// preempted. In [0, 32000).
int32_t FakeToken(const RequestId& id, int64_t pos);
// A prompt of `len` tokens for `id`.
std::vector<int32_t> FakePrompt(const RequestId& id, int64_t len);
// The small config most scheduler tests start from: 8 sequences, 64 tokens per step, chunks of
// 32, blocks of 4 tokens.
SchedulerConfig SmallConfig(Role role);
// The sum of the pool's reference counts.
int64_t TotalRefs(const kv::BlockPool& pool);

// Checks one plan against the config and the pools: token counts and budgets, chunk sizes,
// every item's table covering its positions with held blocks, no block or tail slot shared
// between items, no request twice. "" when it holds, else the first violation.
std::string CheckPlan(const SchedulerConfig& config, const SchedulerOutput& plan,
                      const kv::BlockPool& blocks, const kv::BlockPool& tail_slots);

class Harness {
 public:
  Harness(const SchedulerConfig& config, int64_t num_blocks);

  Scheduler& sched() { return sched_; }
  kv::BlockPool& blocks() { return blocks_; }
  FakeClock& clock() { return clock_; }

  // AddRequest with FakePrompt(id, prompt_len).
  absl::Status Add(const std::string& id, int64_t prompt_len, int64_t max_tokens,
                   int64_t priority = 0);
  // AddRequest with the given prompt and cache salt.
  absl::Status AddPrompt(const std::string& id, std::vector<int32_t> prompt, int64_t max_tokens,
                         const std::string& cache_salt = "");
  // DECODE role, like a reservation plus a finished KV transfer: allocates blocks for the KV of
  // FakePrompt(id, prompt_len) and AddRunning with output = {the first token}. On error the
  // blocks go back to the pool.
  absl::Status AddRunning(const std::string& id, int64_t prompt_len, int64_t max_tokens);
  // DECODE role: resumes a preempted sequence as the router and a prefill node would. Without
  // preemption the blocks cover the worst case (prompt + max_tokens - 1 positions).
  absl::Status Resume(const Preempted& p, int64_t max_tokens);

  // Schedule, check the plan (CheckPlan, CheckInvariants, tokens as expected), answer it with
  // FakeToken (kStop where stop_fn says), UpdateFromOutput, collect what finished. The fake
  // clock advances 1 ms per step.
  SchedulerOutput Step();
  // Steps until the scheduler holds nothing; fails the test after max_steps. Returns the steps.
  int64_t RunUntilIdle(int64_t max_steps = 100000);

  // The token at position pos of request id: its prompt, then FakeToken.
  int32_t ExpectedToken(const RequestId& id, int64_t pos) const;
  // The output a request must end with after n generated tokens.
  std::vector<int32_t> ExpectedOutput(const RequestId& id, int64_t n) const;

  // Speculation: how many of a decode entry's num_lookahead drafted tokens the fake node
  // accepts (clamped to [0, num_lookahead]; they are the expected tokens, so outputs do not
  // change); nullptr: none.
  std::function<int64_t(const DecodeEntry& d)> accept_fn;
  // The node's stop decision for a sampled token; nullptr: never stop.
  std::function<bool(const RequestId& id, int64_t pos, int32_t token)> stop_fn;
  // PREFILL role: retain the blocks and tail slot of every completed prompt (an in-flight KV
  // transfer) until ReleaseRetained().
  bool retain_completed = false;
  void ReleaseRetained();
  // Called between Schedule and UpdateFromOutput (e.g. to Abort a request in the plan).
  std::function<void(const SchedulerOutput& plan)> mid_step;
  // Checks pool.num_used() == blocks held by requests (+ retained) after every step.
  bool check_pool_accounting = true;

  std::map<RequestId, FinishedRequest> finished;
  std::vector<Preempted> preempted;  // DECODE role, in report order
  int64_t steps = 0;

 private:
  SchedulerConfig config_;
  FakeClock clock_;
  kv::BlockPool blocks_;
  kv::BlockPool tail_slots_;
  Scheduler sched_;
  std::map<RequestId, std::vector<int32_t>> prompts_;
  std::vector<int32_t> retained_blocks_;
  std::vector<int32_t> retained_slots_;
};

}  // namespace duet::sched::testing

#endif  // DUET_TESTS_SCHED_SCHED_TEST_UTIL_H_
