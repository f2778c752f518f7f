#include "tests/sched/sched_test_util.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace duet::sched::testing {
namespace {

// SplitMix64: absl::Hash is seeded per process, so it would make the tests nondeterministic.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t HashId(const RequestId& id) {
  uint64_t h = 1469598103934665603ULL;
  for (const char c : id.value()) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ULL;
  return h;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int32_t FakeToken(const RequestId& id, int64_t pos) {
  return static_cast<int32_t>(Mix(HashId(id) ^ Mix(static_cast<uint64_t>(pos))) % 32000);
}

int64_t TotalRefs(const kv::BlockPool& pool) {
  int64_t refs = 0;
  for (int32_t b = 0; b < pool.num_blocks(); ++b) refs += pool.ref_count(b);
  return refs;
}

std::vector<int32_t> FakePrompt(const RequestId& id, int64_t len) {
  std::vector<int32_t> prompt;
  for (int64_t p = 0; p < len; ++p) {
    prompt.push_back(static_cast<int32_t>(Mix(HashId(id) + 7 * static_cast<uint64_t>(p)) % 32000));
  }
  return prompt;
}

SchedulerConfig SmallConfig(Role role) {
  return SchedulerConfig{.role = role,
                         .max_num_seqs = 8,
                         .max_num_batched_tokens = 64,
                         .max_prefill_chunk_tokens = 32,
                         .block_size = 4,
                         .max_sequences = 8};
}

std::string CheckPlan(const SchedulerConfig& config, const SchedulerOutput& plan,
                      const kv::BlockPool& blocks, const kv::BlockPool& tail_slots) {
  const int64_t items = static_cast<int64_t>(plan.decodes.size() + plan.prefills.size());
  if (items > config.max_num_seqs) return absl::StrCat(items, " items > max_num_seqs");
  int64_t decode_tokens = 0;
  for (const DecodeEntry& d : plan.decodes) decode_tokens += 1 + d.num_lookahead;
  if (plan.num_decode_tokens != decode_tokens) {
    return "num_decode_tokens differs from the decode entries and their lookahead";
  }
  if (plan.num_scheduled_tokens() > config.max_num_batched_tokens) {
    return absl::StrCat(plan.num_scheduled_tokens(), " tokens > max_num_batched_tokens");
  }
  if (config.role == Role::kPrefill && !plan.decodes.empty()) return "decodes on a prefill node";
  if (config.role == Role::kDecode && !plan.prefills.empty()) return "prefills on a decode node";
  if (config.role != Role::kDecode && !plan.preempted.empty()) return "preempted reported";
  absl::flat_hash_set<RequestId> ids;
  absl::flat_hash_set<int32_t> used_blocks;
  absl::flat_hash_set<int32_t> used_slots;
  auto check_item = [&](const RequestId& id, int64_t num_cached, int64_t n,
                        const std::vector<int32_t>& table, int32_t slot) -> std::string {
    const std::string name = id.ToString();
    if (!ids.insert(id).second) return absl::StrCat(name, " is in the plan twice");
    if (static_cast<int64_t>(table.size()) * config.block_size < num_cached + n) {
      return absl::StrCat(name, ": ", table.size(), " blocks do not cover ", num_cached + n,
                          " positions");
    }
    for (const int32_t b : table) {
      if (b < 0 || b >= blocks.num_blocks() || blocks.ref_count(b) == 0) {
        return absl::StrCat(name, ": block ", b, " is not held");
      }
      // Only cached prefix blocks may be shared.
      if (!used_blocks.insert(b).second && !blocks.is_cached(b)) {
        return absl::StrCat(name, ": block ", b, " shared");
      }
    }
    if (slot < 0 || slot >= tail_slots.num_blocks() || tail_slots.ref_count(slot) == 0 ||
        !used_slots.insert(slot).second) {
      return absl::StrCat(name, ": bad or shared tail slot ", slot);
    }
    return "";
  };
  for (const DecodeEntry& d : plan.decodes) {
    if (d.num_lookahead < 0 || d.num_lookahead > kMaxLookahead) {
      return absl::StrCat(d.id.ToString(), ": lookahead ", d.num_lookahead);
    }
    if (std::string e = check_item(d.id, d.num_cached, 1 + d.num_lookahead, d.block_table,
                                   d.tail_slot);
        !e.empty()) {
      return e;
    }
  }
  int64_t prefill_tokens = 0;
  for (const PrefillChunk& c : plan.prefills) {
    const int64_t n = static_cast<int64_t>(c.tokens.size());
    if (n < 1 || n > config.max_prefill_chunk_tokens) {
      return absl::StrCat(c.id.ToString(), ": chunk of ", n, " tokens");
    }
    prefill_tokens += n;
    if (std::string e = check_item(c.id, c.num_cached, n, c.block_table, c.tail_slot); !e.empty()) {
      return e;
    }
  }
  if (prefill_tokens != plan.num_prefill_tokens) return "num_prefill_tokens differs";
  return "";
}

Harness::Harness(const SchedulerConfig& config, int64_t num_blocks)
    : config_(config),
      blocks_(num_blocks),
      tail_slots_(config.max_sequences),
      sched_(config, &blocks_, &clock_, &tail_slots_) {}

absl::Status Harness::Add(const std::string& id, int64_t prompt_len, int64_t max_tokens,
                          int64_t priority) {
  RequestSpec spec{.id = RequestId(id), .max_tokens = max_tokens, .priority = priority};
  spec.prompt = FakePrompt(spec.id, prompt_len);
  prompts_[spec.id] = spec.prompt;
  return sched_.AddRequest(std::move(spec));
}

absl::Status Harness::AddPrompt(const std::string& id, std::vector<int32_t> prompt,
                                int64_t max_tokens, const std::string& cache_salt) {
  RequestSpec spec{.id = RequestId(id), .max_tokens = max_tokens, .cache_salt = cache_salt};
  spec.prompt = std::move(prompt);
  prompts_[spec.id] = spec.prompt;
  return sched_.AddRequest(std::move(spec));
}

absl::Status Harness::AddRunning(const std::string& id, int64_t prompt_len, int64_t max_tokens) {
  const RequestId rid(id);
  Preempted p{rid, FakePrompt(rid, prompt_len), prompt_len, 1};
  p.tokens.push_back(FakeToken(rid, prompt_len));
  prompts_[rid] = FakePrompt(rid, prompt_len);
  return Resume(p, max_tokens);
}

absl::Status Harness::Resume(const Preempted& p, int64_t max_tokens) {
  RequestSpec spec{.id = p.id, .max_tokens = max_tokens};
  spec.prompt.assign(p.tokens.begin(), p.tokens.begin() + p.num_prompt_tokens);
  spec.output.assign(p.tokens.begin() + p.num_prompt_tokens, p.tokens.end());
  // Without preemption the reservation covers the sequence's worst case, as a router must.
  const int64_t kv_positions = config_.enable_preemption ? static_cast<int64_t>(p.tokens.size()) - 1
                                                         : p.num_prompt_tokens + max_tokens - 1;
  absl::StatusOr<std::vector<int32_t>> table =
      blocks_.Allocate(CeilDiv(kv_positions, config_.block_size));
  if (!table.ok()) return table.status();
  std::vector<int32_t> copy = *table;
  absl::Status s = sched_.AddRunning(std::move(spec), std::move(copy));
  if (!s.ok()) {
    EXPECT_TRUE(blocks_.Release(*table).ok());
  }
  return s;
}

int32_t Harness::ExpectedToken(const RequestId& id, int64_t pos) const {
  const std::vector<int32_t>& prompt = prompts_.at(id);
  return pos < static_cast<int64_t>(prompt.size()) ? prompt[static_cast<size_t>(pos)]
                                                   : FakeToken(id, pos);
}

std::vector<int32_t> Harness::ExpectedOutput(const RequestId& id, int64_t n) const {
  const int64_t prompt_len = static_cast<int64_t>(prompts_.at(id).size());
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(FakeToken(id, prompt_len + i));
  return out;
}

void Harness::ReleaseRetained() {
  EXPECT_TRUE(blocks_.Release(retained_blocks_).ok());
  EXPECT_TRUE(tail_slots_.Release(retained_slots_).ok());
  retained_blocks_.clear();
  retained_slots_.clear();
}

SchedulerOutput Harness::Step() {
  ++steps;
  SchedulerOutput plan = sched_.Schedule();
  EXPECT_EQ(CheckPlan(config_, plan, blocks_, tail_slots_), "") << "step " << steps;
  EXPECT_TRUE(sched_.CheckInvariants().ok()) << sched_.CheckInvariants();
  EXPECT_EQ(plan.scheduled_at, clock_.Now());
  StepResult result;
  auto answer = [&](const RequestId& id, int64_t pos) {
    RequestOutput o{.id = id, .token = FakeToken(id, pos)};
    if (stop_fn && stop_fn(id, pos, *o.token)) o.finish = FinishReason::kStop;
    result.outputs.push_back(o);
  };
  for (const DecodeEntry& d : plan.decodes) {
    EXPECT_EQ(d.token, ExpectedToken(d.id, d.num_cached)) << d.id << " at " << d.num_cached;
    // Speculation: the drafts that match are the expected tokens, then the correction.
    const int64_t accepted =
        accept_fn ? std::clamp<int64_t>(accept_fn(d), 0, d.num_lookahead) : 0;
    std::vector<int32_t> drafts;
    int64_t pos = d.num_cached + 1;
    for (; pos <= d.num_cached + accepted; ++pos) {
      drafts.push_back(FakeToken(d.id, pos));
      if (stop_fn && stop_fn(d.id, pos, drafts.back())) break;
    }
    if (pos <= d.num_cached + accepted) {  // a stop inside the accepted drafts ends it there
      const int32_t last = drafts.back();
      drafts.pop_back();
      result.outputs.push_back(RequestOutput{.id = d.id, .token = last,
                                             .finish = FinishReason::kStop,
                                             .accepted_drafts = drafts});
      continue;
    }
    answer(d.id, pos);
    result.outputs.back().accepted_drafts = drafts;
  }
  for (const PrefillChunk& c : plan.prefills) {
    for (size_t i = 0; i < c.tokens.size(); ++i) {
      const int64_t pos = c.num_cached + static_cast<int64_t>(i);
      EXPECT_EQ(c.tokens[i], ExpectedToken(c.id, pos)) << c.id << " at " << pos;
    }
    if (!c.completes_prompt) continue;
    answer(c.id, c.num_cached + static_cast<int64_t>(c.tokens.size()));
    if (retain_completed) {
      EXPECT_TRUE(blocks_.Retain(c.block_table).ok());
      const int32_t slot[] = {c.tail_slot};
      EXPECT_TRUE(tail_slots_.Retain(slot).ok());
      retained_blocks_.insert(retained_blocks_.end(), c.block_table.begin(), c.block_table.end());
      retained_slots_.push_back(c.tail_slot);
    }
  }
  for (const Preempted& p : plan.preempted) {
    EXPECT_EQ(sched_.Info(p.id), std::nullopt);
    for (size_t i = 0; i < p.tokens.size(); ++i) {
      EXPECT_EQ(p.tokens[i], ExpectedToken(p.id, static_cast<int64_t>(i)));
    }
    preempted.push_back(p);
  }
  if (mid_step) mid_step(plan);
  const absl::Status s = sched_.UpdateFromOutput(result);
  EXPECT_TRUE(s.ok()) << s;
  for (FinishedRequest& f : sched_.TakeFinished()) {
    EXPECT_EQ(sched_.Info(f.id), std::nullopt);
    EXPECT_FALSE(finished.contains(f.id)) << f.id << " finished twice";
    finished[f.id] = std::move(f);
  }
  EXPECT_TRUE(sched_.CheckInvariants().ok()) << sched_.CheckInvariants();
  if (check_pool_accounting) {
    EXPECT_EQ(TotalRefs(blocks_),
              sched_.num_block_refs() + static_cast<int64_t>(retained_blocks_.size()));
    EXPECT_EQ(tail_slots_.num_used(),
              sched_.num_running() + static_cast<int64_t>(retained_slots_.size()));
  }
  clock_.Advance(absl::Milliseconds(1));
  return plan;
}

int64_t Harness::RunUntilIdle(int64_t max_steps) {
  const int64_t start = steps;
  while (sched_.has_requests()) {
    if (steps - start >= max_steps) {
      ADD_FAILURE() << "scheduler still busy after " << max_steps
                    << " steps: " << sched_.num_running() << " running, " << sched_.num_waiting()
                    << " waiting";
      break;
    }
    Step();
  }
  return steps - start;
}

}  // namespace duet::sched::testing
