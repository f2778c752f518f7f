// Seeded random traffic (arrivals of random lengths, node stop decisions, aborts, some of them
// between Schedule and UpdateFromOutput, requests too large for the pool) over thousands of
// steps, for every role with and without preemption. The Harness checks the plan and the
// scheduler's invariants every step; at the end every request has the output of a run without
// pressure and every block and tail slot is free.
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "gtest/gtest.h"
#include "tests/sched/sched_test_util.h"

namespace duet::sched {
namespace {

using ::duet::sched::testing::FakeToken;
using ::duet::sched::testing::Harness;

constexpr int64_t kNumBlocks = 48;
constexpr int64_t kBlockSize = 8;
constexpr int64_t kTrafficSteps = 3000;

class SchedulerStressTest : public ::testing::TestWithParam<std::tuple<Role, bool, int>> {};

TEST_P(SchedulerStressTest, InvariantsHoldUnderRandomTraffic) {
  const auto [role, preemption, seed] = GetParam();
  SchedulerConfig config{.role = role,
                         .max_num_seqs = 8,
                         .max_num_batched_tokens = 64,
                         .max_prefill_chunk_tokens = 24,
                         .block_size = kBlockSize,
                         .max_sequences = 6,
                         .enable_preemption = preemption};
  Harness h(config, kNumBlocks);
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  auto chance = [&](double p) { return std::bernoulli_distribution(p)(rng); };
  // The node's sampler stops a request on roughly one token in 60.
  h.stop_fn = [](const RequestId& id, int64_t pos, int32_t token) {
    return (token + pos + static_cast<int64_t>(id.value().size())) % 60 == 0;
  };
  h.retain_completed = role == Role::kPrefill;

  absl::flat_hash_map<RequestId, int64_t> max_tokens;  // every request accepted
  std::vector<RequestId> live;                         // accepted and not yet known to be gone
  std::vector<Preempted> to_resume;                    // DECODE: the "router"'s queue
  size_t reported = 0;
  int64_t next_id = 0, aborted = 0, rejected = 0;
  auto add_one = [&] {
    const std::string id = "q" + std::to_string(next_id++);
    const int64_t prompt = chance(0.02) ? uniform(300, 500) : uniform(1, 120);
    const int64_t max = uniform(1, 40);
    absl::Status s = role == Role::kDecode ? h.AddRunning(id, prompt, max) : h.Add(id, prompt, max);
    if (s.ok()) {
      max_tokens[RequestId(id)] = max;
      live.push_back(RequestId(id));
      return;
    }
    ++rejected;
    const int64_t need =
        (prompt + (preemption || role == Role::kPrefill ? 0 : max - 1) + kBlockSize - 1) /
        kBlockSize;
    if (role != Role::kDecode) {
      EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
      EXPECT_GT(need, kNumBlocks) << s;
    }
  };
  auto abort_one = [&] {
    if (live.empty()) return;
    const size_t i = static_cast<size_t>(uniform(0, static_cast<int64_t>(live.size()) - 1));
    const absl::Status s = h.sched().Abort(live[i]);
    if (s.ok()) {
      ++aborted;
      max_tokens.erase(live[i]);
    }
    live.erase(live.begin() + static_cast<long>(i));
  };
  h.mid_step = [&](const SchedulerOutput&) {
    if (chance(0.02)) abort_one();
  };

  for (int64_t step = 0; step < kTrafficSteps || h.sched().has_requests() || !to_resume.empty();
       ++step) {
    ASSERT_LT(step, kTrafficSteps + 20000) << "no progress: " << h.sched().num_running()
                                           << " running, " << h.sched().num_waiting() << " waiting";
    if (step < kTrafficSteps) {
      if (chance(0.35)) add_one();
      if (chance(0.03)) abort_one();
    }
    if (!to_resume.empty() && chance(0.5)) {
      const Preempted& p = to_resume.front();
      if (h.Resume(p, max_tokens.at(p.id)).ok()) to_resume.erase(to_resume.begin());
    }
    if (role == Role::kPrefill && chance(0.3)) h.ReleaseRetained();  // transfers complete
    h.Step();
    if (::testing::Test::HasFailure()) return;
    for (; reported < h.preempted.size(); ++reported) to_resume.push_back(h.preempted[reported]);
    std::erase_if(live, [&](const RequestId& id) { return h.finished.contains(id); });
  }
  h.ReleaseRetained();

  EXPECT_EQ(h.blocks().num_free(), kNumBlocks);
  EXPECT_EQ(h.sched().num_free_tail_slots(), config.max_sequences);
  EXPECT_EQ(h.finished.size(), max_tokens.size());
  int64_t stopped = 0, exhausted = 0;
  for (const auto& [id, f] : h.finished) {
    ASSERT_TRUE(max_tokens.contains(id)) << id;
    const int64_t n = static_cast<int64_t>(f.output_tokens.size());
    EXPECT_EQ(f.output_tokens, h.ExpectedOutput(id, n)) << id;
    switch (f.reason) {
      case FinishReason::kLength:
        EXPECT_EQ(n, max_tokens.at(id)) << id;
        break;
      case FinishReason::kStop:
        ++stopped;
        EXPECT_TRUE(h.stop_fn(id, f.num_prompt_tokens + n - 1, f.output_tokens.back())) << id;
        break;
      case FinishReason::kPrefillDone:
        EXPECT_EQ(role, Role::kPrefill);
        EXPECT_EQ(n, 1);
        break;
      case FinishReason::kResourceExhausted:
        ++exhausted;
        EXPECT_GT((f.num_prompt_tokens + n + kBlockSize - 1) / kBlockSize, kNumBlocks) << id;
        break;
      default:
        ADD_FAILURE() << id << " finished with " << FinishReasonName(f.reason);
    }
  }
  EXPECT_GT(h.finished.size(), 500u);
  EXPECT_GT(aborted, 10);
  if (role != Role::kPrefill) {
    EXPECT_GT(stopped, 0);
  }
  if (preemption && role != Role::kPrefill) {
    EXPECT_GT(h.sched().num_preemptions(), 0);
  }
  if (!preemption) {
    EXPECT_EQ(h.sched().num_preemptions(), 0);
  }
  RecordProperty("preemptions", std::to_string(h.sched().num_preemptions()));
  RecordProperty("rejected", std::to_string(rejected));
  RecordProperty("exhausted", std::to_string(exhausted));
}

INSTANTIATE_TEST_SUITE_P(AllRoles, SchedulerStressTest,
                         ::testing::Combine(::testing::Values(Role::kPrefill, Role::kDecode,
                                                              Role::kColocated),
                                            ::testing::Bool(), ::testing::Values(1, 2, 3)),
                         [](const ::testing::TestParamInfo<SchedulerStressTest::ParamType>& param) {
                           return std::string(RoleName(std::get<0>(param.param))) +
                                  (std::get<1>(param.param) ? "_preempt" : "_no_preempt") +
                                  "_seed" + std::to_string(std::get<2>(param.param));
                         });

}  // namespace
}  // namespace duet::sched
