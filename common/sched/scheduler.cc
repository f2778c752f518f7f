#include "common/sched/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace duet::sched {
namespace {

// Broken invariants (REQUIRES clauses, a pool released behind the scheduler's back) crash loudly
// rather than hand out a block twice.
void CheckOrDie(bool condition, const char* message) {
  if (!condition) {
    std::fprintf(stderr, "scheduler: check failed: %s\n", message);
    std::abort();
  }
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool ByPrecedence(const Request* a, const Request* b) { return a->Precedes(*b); }

void InsertSorted(std::vector<Request*>* queue, Request* r) {
  queue->insert(std::upper_bound(queue->begin(), queue->end(), r, ByPrecedence), r);
}

void EraseFrom(std::vector<Request*>* queue, const Request* r) {
  auto it = std::find(queue->begin(), queue->end(), r);
  CheckOrDie(it != queue->end(), "request missing from its queue");
  queue->erase(it);
}

template <typename Item>
void EraseById(std::vector<Item>* items, const RequestId& id) {
  auto it = std::find_if(items->begin(), items->end(), [&](const Item& i) { return i.id == id; });
  CheckOrDie(it != items->end(), "scheduled item missing from the plan");
  items->erase(it);
}

bool NodeMaySet(FinishReason reason) {
  return reason == FinishReason::kNone || reason == FinishReason::kStop ||
         reason == FinishReason::kLength || reason == FinishReason::kAborted;
}

}  // namespace

// The plan being built by Schedule().
struct Scheduler::Step {
  SchedulerOutput out;
  int64_t budget = 0;      // tokens left under max_num_batched_tokens
  bool preempted = false;  // no admissions in a step that preempted
};

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kPrefill:
      return "prefill";
    case Role::kDecode:
      return "decode";
    case Role::kColocated:
      return "colocated";
  }
  return "unknown";
}

absl::Status SchedulerConfig::Validate() const {
  const std::pair<const char*, int64_t> sizes[] = {
      {"max_num_seqs", max_num_seqs},
      {"max_num_batched_tokens", max_num_batched_tokens},
      {"max_prefill_chunk_tokens", max_prefill_chunk_tokens},
      {"block_size", block_size},
      {"max_sequences", max_sequences}};
  for (const auto& [name, value] : sizes) {
    if (value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("scheduler config: ", name, " must be positive, got ", value));
    }
  }
  if (max_num_batched_tokens < max_num_seqs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler config: max_num_batched_tokens (", max_num_batched_tokens,
        ") must be at least max_num_seqs (", max_num_seqs, ") so every sequence can decode"));
  }
  return absl::OkStatus();
}

Scheduler::Scheduler(const SchedulerConfig& config, kv::BlockPool* blocks, Clock* clock,
                     kv::BlockPool* tail_slots)
    : config_(config), blocks_(blocks), clock_(clock), tail_slots_(tail_slots) {
  CheckOrDie(config_.Validate().ok(), "invalid SchedulerConfig (see SchedulerConfig::Validate)");
  CheckOrDie(blocks_ != nullptr && clock_ != nullptr, "null block pool or clock");
  if (tail_slots_ == nullptr) {
    owned_tail_slots_ = std::make_unique<kv::BlockPool>(config_.max_sequences);
    tail_slots_ = owned_tail_slots_.get();
  }
  CheckOrDie(tail_slots_->num_blocks() == config_.max_sequences,
             "tail-slot pool size differs from max_sequences");
}

// Releases what the remaining requests hold, so a scheduler torn down mid-run leaks nothing.
Scheduler::~Scheduler() {
  for (Request* r : running_) ReleaseKv(r);
}

Request* Scheduler::Find(const RequestId& id) const {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

int64_t Scheduler::BlocksFor(int64_t positions) const {
  return CeilDiv(positions, config_.block_size);
}

int64_t Scheduler::WorstCaseBlocks(const Request& r) const {
  // The last sampled token never runs, so it needs no KV position.
  const int64_t positions = config_.role == Role::kPrefill
                                ? r.prefill_end
                                : std::max(r.prefill_end, r.num_prompt_tokens + r.max_tokens - 1);
  return BlocksFor(positions);
}

int64_t Scheduler::OutstandingReserve() const {
  int64_t reserve = 0;
  for (const Request* r : running_)
    reserve += std::max<int64_t>(0, WorstCaseBlocks(*r) - r->num_blocks());
  return reserve;
}

int64_t Scheduler::Fit(const Request& r) const {
  return (r.num_blocks() + blocks_->num_free()) * config_.block_size - r.num_computed;
}

absl::Status Scheduler::ValidateSpec(const RequestSpec& spec) const {
  if (requests_.contains(spec.id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("request ", spec.id.ToString(), " is already in the scheduler"));
  }
  if (spec.prompt.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("request ", spec.id.ToString(), " has an empty prompt"));
  }
  for (const std::vector<int32_t>* list : {&spec.prompt, &spec.output}) {
    for (const int32_t t : *list) {
      if (t < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("request ", spec.id.ToString(), " has a negative token id ", t));
      }
    }
  }
  const int64_t num_output = static_cast<int64_t>(spec.output.size());
  if (spec.max_tokens <= num_output) {
    return absl::InvalidArgumentError(
        absl::StrCat("request ", spec.id.ToString(), ": max_tokens ", spec.max_tokens,
                     " leaves nothing to generate after ", num_output, " generated tokens"));
  }
  return absl::OkStatus();
}

std::unique_ptr<Request> Scheduler::NewRequest(RequestSpec spec) {
  auto r = std::make_unique<Request>();
  r->id = std::move(spec.id);
  r->serial = next_serial_++;
  r->priority = spec.priority;
  r->num_prompt_tokens = static_cast<int64_t>(spec.prompt.size());
  r->tokens = std::move(spec.prompt);
  r->tokens.insert(r->tokens.end(), spec.output.begin(), spec.output.end());
  r->max_tokens = spec.max_tokens;
  r->prefill_end = r->num_tokens();
  r->cache_salt = std::move(spec.cache_salt);
  r->cacheable = spec.cacheable;
  r->arrival_time = clock_->Now();
  ExtendHashes(r.get());
  return r;
}

void Scheduler::ExtendHashes(Request* r) const {
  if (!config_.enable_prefix_caching || !r->cacheable) return;
  const int64_t bs = config_.block_size;
  for (int64_t i = static_cast<int64_t>(r->block_hashes.size()); (i + 1) * bs <= r->num_tokens();
       ++i) {
    const kv::BlockHash parent = i == 0 ? kv::kRootParent : r->block_hashes.back();
    r->block_hashes.push_back(kv::HashBlock(
        parent, config_.model_id, r->cache_salt,
        absl::MakeConstSpan(r->tokens).subspan(static_cast<size_t>(i * bs),
                                               static_cast<size_t>(bs))));
  }
}

void Scheduler::CacheComputedBlocks(Request* r) {
  if (!config_.enable_prefix_caching) return;
  const int64_t full = std::min({r->num_computed / config_.block_size,
                                 static_cast<int64_t>(r->block_hashes.size()), r->num_blocks()});
  for (int64_t i = r->num_cached_blocks; i < full; ++i) {
    // False when another block holds the same KV already: this one stays private.
    blocks_->CacheBlock(r->block_table[static_cast<size_t>(i)],
                        r->block_hashes[static_cast<size_t>(i)]);
  }
  r->num_cached_blocks = std::max(r->num_cached_blocks, full);
}

Scheduler::PrefixHit Scheduler::LookupPrefix(Request* r) const {
  PrefixHit hit;
  if (!config_.enable_prefix_caching || r->num_computed != 0) return hit;
  const int64_t limit = std::min(static_cast<int64_t>(r->block_hashes.size()),
                                 kv::MaxReusedBlocks(r->prefill_end, config_.block_size));
  const absl::Span<const kv::BlockHash> hashes =
      absl::MakeConstSpan(r->block_hashes).subspan(0, static_cast<size_t>(std::max<int64_t>(limit, 0)));
  hit.blocks = blocks_->LookupPrefix(hashes);
  hit.evictable = blocks_->CountEvictable(hashes, hit.blocks);
  return hit;
}

absl::Status Scheduler::AddRequest(RequestSpec spec) {
  if (config_.role == Role::kDecode) {
    return absl::FailedPreconditionError(
        "a decode node takes sequences through AddRunning, not AddRequest");
  }
  if (absl::Status s = ValidateSpec(spec); !s.ok()) return s;
  std::unique_ptr<Request> r = NewRequest(std::move(spec));
  const int64_t needed =
      config_.enable_preemption ? BlocksFor(r->prefill_end) : WorstCaseBlocks(*r);
  if (needed > blocks_->num_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request ", r->id.ToString(), " needs ", needed, " KV blocks of ",
                     config_.block_size, " tokens (", r->num_tokens(), " tokens to prefill",
                     config_.enable_preemption ? "" : absl::StrCat(", max_tokens ", r->max_tokens),
                     "); the pool has ", blocks_->num_blocks(),
                     config_.enable_preemption ? "" : " and preemption is disabled"));
  }
  Request* raw = r.get();
  requests_.emplace(raw->id, std::move(r));
  InsertSorted(&waiting_, raw);
  return absl::OkStatus();
}

absl::Status Scheduler::AddRunning(RequestSpec spec, std::vector<int32_t> blocks,
                                   int32_t tail_slot) {
  if (config_.role != Role::kDecode) {
    return absl::FailedPreconditionError(
        absl::StrCat("AddRunning is for decode nodes; this scheduler's role is ",
                     std::string(RoleName(config_.role))));
  }
  if (absl::Status s = ValidateSpec(spec); !s.ok()) return s;
  const std::string name = spec.id.ToString();
  const int64_t num_cached = static_cast<int64_t>(spec.prompt.size() + spec.output.size()) - 1;
  const int64_t num_blocks = static_cast<int64_t>(blocks.size());
  if (num_blocks * config_.block_size < num_cached) {
    return absl::InvalidArgumentError(
        absl::StrCat("request ", name, ": ", num_blocks, " blocks of ", config_.block_size,
                     " tokens cannot hold its KV for ", num_cached, " positions"));
  }
  absl::flat_hash_set<int32_t> seen;
  for (const int32_t b : blocks) {
    if (!seen.insert(b).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", name, ": block ", b, " appears twice in its block table"));
    }
    if (b < 0 || b >= blocks_->num_blocks() || blocks_->ref_count(b) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("request ", name, ": block ", b, " is not held in the KV pool"));
    }
  }
  if (tail_slot >= 0 &&
      (tail_slot >= tail_slots_->num_blocks() || tail_slots_->ref_count(tail_slot) == 0)) {
    return absl::FailedPreconditionError(
        absl::StrCat("request ", name, ": tail slot ", tail_slot, " is not held"));
  }
  for (const Request* other : running_) {
    if (tail_slot >= 0 && other->tail_slot == tail_slot) {
      return absl::FailedPreconditionError(absl::StrCat("request ", name, ": tail slot ", tail_slot,
                                                        " belongs to ", other->id.ToString()));
    }
  }
  if (num_running() >= config_.max_num_seqs) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request ", name, ": the node already runs max_num_seqs = ", config_.max_num_seqs,
        " sequences"));
  }
  if (tail_slot < 0) {
    absl::StatusOr<std::vector<int32_t>> slot = tail_slots_->Allocate(1);
    if (!slot.ok()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "request ", name, ": all ", config_.max_sequences, " tail slots are in use"));
    }
    tail_slot = (*slot)[0];
  }
  std::unique_ptr<Request> r = NewRequest(std::move(spec));
  r->num_computed = num_cached;
  r->prefill_end = num_cached;
  r->block_table = std::move(blocks);
  r->tail_slot = tail_slot;
  r->state = RequestState::kRunning;
  CacheComputedBlocks(r.get());
  Request* raw = r.get();
  requests_.emplace(raw->id, std::move(r));
  InsertSorted(&running_, raw);
  return absl::OkStatus();
}

absl::Status Scheduler::Abort(const RequestId& id) {
  Request* r = Find(id);
  if (r == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        "request ", id.ToString(), " is not in the scheduler (unknown, finished or aborted)"));
  }
  if (r->state == RequestState::kRunning) {
    ReleaseKv(r);
    EraseFrom(&running_, r);
  } else {
    EraseFrom(&waiting_, r);
  }
  requests_.erase(id);
  return absl::OkStatus();
}

void Scheduler::ReleaseKv(Request* r) {
  CheckOrDie(blocks_->Release(r->block_table).ok(), "KV block released behind the scheduler");
  r->block_table.clear();
  r->num_cached_blocks = 0;
  if (r->tail_slot >= 0) {
    const int32_t slot[] = {r->tail_slot};
    CheckOrDie(tail_slots_->Release(slot).ok(), "tail slot released behind the scheduler");
    r->tail_slot = -1;
  }
}

void Scheduler::Finish(Request* r, FinishReason reason, std::string detail) {
  FinishedRequest f;
  f.id = r->id;
  f.reason = reason;
  f.detail = std::move(detail);
  f.num_prompt_tokens = r->num_prompt_tokens;
  f.output_tokens.assign(r->tokens.begin() + r->num_prompt_tokens, r->tokens.end());
  f.num_preemptions = r->num_preemptions;
  f.times = {r->arrival_time, r->first_scheduled_time, clock_->Now()};
  if (r->state == RequestState::kRunning) {
    ReleaseKv(r);
    EraseFrom(&running_, r);
  } else {
    EraseFrom(&waiting_, r);
  }
  finished_.push_back(std::move(f));
  const RequestId id = r->id;
  requests_.erase(id);
}

void Scheduler::Unschedule(Request* r, Step* step) {
  if (r->step_tokens == 0) return;
  if (r->step_decode) {
    EraseById(&step->out.decodes, r->id);
    step->out.num_decode_tokens -= r->step_tokens;
  } else {
    EraseById(&step->out.prefills, r->id);
    step->out.num_prefill_tokens -= r->step_tokens;
  }
  step->budget += r->step_tokens;
  r->step_tokens = 0;
}

void Scheduler::Preempt(Request* victim, Step* step) {
  Unschedule(victim, step);
  ReleaseKv(victim);
  EraseFrom(&running_, victim);
  ++num_preemptions_;
  ++victim->num_preemptions;
  step->preempted = true;
  if (config_.role == Role::kDecode) {
    step->out.preempted.push_back(Preempted{victim->id, victim->tokens, victim->num_prompt_tokens,
                                            victim->num_output_tokens()});
    const RequestId id = victim->id;
    requests_.erase(id);
    return;
  }
  // Recompute: prefill everything known so far; the output continues where it stopped.
  victim->num_computed = 0;
  victim->prefill_end = victim->num_tokens();
  victim->state = RequestState::kWaiting;
  InsertSorted(&waiting_, victim);
}

Scheduler::Grow Scheduler::GrowTo(Request* r, int64_t positions, Step* step) {
  const int64_t total = BlocksFor(positions);
  const int64_t need = total - r->num_blocks();
  if (need <= 0) return Grow::kOk;
  while (!blocks_->CanAllocate(need)) {
    if (total > blocks_->num_blocks()) {
      Unschedule(r, step);
      Finish(r, FinishReason::kResourceExhausted,
             absl::StrCat("sequence needs ", total, " KV blocks of ", config_.block_size,
                          " tokens for ", positions, " positions; the pool has ",
                          blocks_->num_blocks()));
      return Grow::kGone;
    }
    if (!config_.enable_preemption) return Grow::kStalled;
    Request* victim = running_.back();  // least important: latest arrival of the lowest priority
    Preempt(victim, step);
    if (victim == r) return Grow::kGone;
  }
  absl::StatusOr<std::vector<int32_t>> fresh = blocks_->Allocate(need);
  CheckOrDie(fresh.ok(), "allocation failed after CanAllocate");
  r->block_table.insert(r->block_table.end(), fresh->begin(), fresh->end());
  return Grow::kOk;
}

void Scheduler::AddChunk(Request* r, int64_t n, Step* step) {
  PrefillChunk c;
  c.id = r->id;
  c.num_cached = r->num_computed;
  c.tokens.assign(r->tokens.begin() + r->num_computed, r->tokens.begin() + r->num_computed + n);
  c.block_table = r->block_table;
  c.tail_slot = r->tail_slot;
  c.completes_prompt = r->num_computed + n == r->prefill_end;
  step->out.prefills.push_back(std::move(c));
  step->out.num_prefill_tokens += n;
  step->budget -= n;
  r->step_tokens = n;
  r->step_decode = false;
}

void Scheduler::AddDecode(Request* r, Step* step) {
  step->out.decodes.push_back(
      DecodeEntry{r->id, r->num_computed, r->tokens.back(), r->block_table, r->tail_slot});
  step->out.num_decode_tokens += 1;
  step->budget -= 1;
  r->step_tokens = 1;
  r->step_decode = true;
}

// Loops over running_ by index: GrowTo only removes r itself or requests after it (the least
// important), so on kGone index i already names the next request, or the end.
void Scheduler::ScheduleDecodes(Step* step) {
  for (size_t i = 0; i < running_.size() && step->budget > 0;) {
    Request* r = running_[i];
    if (r->prefilling()) {
      ++i;
      continue;
    }
    const Grow g = GrowTo(r, r->num_computed + 1, step);
    if (g == Grow::kGone) continue;
    if (g == Grow::kOk) AddDecode(r, step);
    ++i;
  }
}

void Scheduler::GrantLookahead(Step* step) {
  for (DecodeEntry& d : step->out.decodes) {
    Request* r = Find(d.id);
    int64_t k = std::min({r->lookahead, step->budget, r->max_tokens - r->num_output_tokens() - 1});
    if (k <= 0) continue;
    // From free blocks only: shrink k to what they cover.
    const int64_t coverable =
        (r->num_blocks() + blocks_->num_free()) * config_.block_size - (r->num_computed + 1);
    k = std::min(k, coverable);
    if (k <= 0) continue;
    r->blocks_before_lookahead = r->num_blocks();
    const int64_t need = BlocksFor(r->num_computed + 1 + k) - r->num_blocks();
    if (need > 0) {
      absl::StatusOr<std::vector<int32_t>> fresh = blocks_->Allocate(need);
      CheckOrDie(fresh.ok(), "lookahead allocation failed within the free blocks");
      r->block_table.insert(r->block_table.end(), fresh->begin(), fresh->end());
    }
    d.num_lookahead = k;
    d.block_table = r->block_table;
    r->step_lookahead = k;
    r->step_tokens += k;
    step->budget -= k;
    step->out.num_decode_tokens += k;
  }
}

void Scheduler::TrimLookahead(Request* r) {
  const int64_t keep = std::max(r->blocks_before_lookahead, BlocksFor(r->num_computed + 1));
  if (r->num_blocks() > keep) {
    const absl::Span<const int32_t> extra =
        absl::MakeConstSpan(r->block_table).subspan(static_cast<size_t>(keep));
    CheckOrDie(blocks_->Release(extra).ok(), "lookahead block released behind the scheduler");
    r->block_table.resize(static_cast<size_t>(keep));
  }
  r->blocks_before_lookahead = 0;
}

absl::Status Scheduler::SetLookahead(const RequestId& id, int64_t lookahead) {
  Request* r = Find(id);
  if (r == nullptr) {
    return absl::NotFoundError(absl::StrCat("request ", id.ToString(), " is not in the scheduler"));
  }
  if (lookahead < 0 || lookahead > kMaxLookahead) {
    return absl::InvalidArgumentError(
        absl::StrCat("lookahead ", lookahead, " outside [0, ", kMaxLookahead, "]"));
  }
  r->lookahead = lookahead;
  return absl::OkStatus();
}

Scheduler::Grow Scheduler::SchedulePrefillChunk(Request* r, Step* step) {
  const int64_t want =
      std::min({r->prefill_end - r->num_computed, config_.max_prefill_chunk_tokens, step->budget});
  // A chunk shrinks to the free blocks; only a sequence that cannot run one token preempts.
  if (Fit(*r) < 1) {
    const Grow g = GrowTo(r, r->num_computed + 1, step);
    if (g != Grow::kOk) return g;
  }
  const int64_t n = std::min(want, Fit(*r));
  CheckOrDie(GrowTo(r, r->num_computed + n, step) == Grow::kOk, "chunk outgrew the free blocks");
  AddChunk(r, n, step);
  return Grow::kOk;
}

void Scheduler::ScheduleRunningPrefills(Step* step) {
  for (size_t i = 0; i < running_.size() && step->budget > 0;) {
    Request* r = running_[i];
    if (!r->prefilling() || r->step_tokens > 0) {
      ++i;
      continue;
    }
    if (SchedulePrefillChunk(r, step) == Grow::kGone) continue;
    ++i;
  }
}

void Scheduler::AdmitWaiting(Step* step) {
  if (step->preempted) return;
  // FCFS: stop at the first request that does not fit, so a large one is not starved.
  while (!waiting_.empty() && step->budget > 0 && num_running() < config_.max_num_seqs) {
    Request* r = waiting_.front();
    if (!tail_slots_->CanAllocate(1)) break;
    // A cached prefix is taken as is; its evictable blocks stop counting as free.
    const PrefixHit hit = LookupPrefix(r);
    const int64_t free_after = blocks_->num_free() - hit.evictable;
    if (!config_.enable_preemption &&
        free_after - OutstandingReserve() < WorstCaseBlocks(*r) - hit.blocks) {
      break;
    }
    const int64_t start = hit.blocks * config_.block_size;
    const int64_t n = std::min({r->prefill_end - start, config_.max_prefill_chunk_tokens,
                                step->budget, free_after * config_.block_size});
    if (n < 1) break;
    absl::StatusOr<std::vector<int32_t>> slot = tail_slots_->Allocate(1);
    CheckOrDie(slot.ok(), "tail slot allocation failed after CanAllocate");
    r->tail_slot = (*slot)[0];
    if (config_.enable_prefix_caching) {
      r->block_table = blocks_->AcquirePrefix(r->block_hashes, hit.blocks);
      r->num_computed = start;
      r->num_cached_blocks = hit.blocks;
      r->num_prefix_hit_tokens = start;
      prefix_stats_.queried_tokens += r->prefill_end;
      prefix_stats_.hit_tokens += start;
    }
    waiting_.erase(waiting_.begin());
    r->state = RequestState::kRunning;
    InsertSorted(&running_, r);
    CheckOrDie(GrowTo(r, r->num_computed + n, step) == Grow::kOk, "admission outgrew free blocks");
    AddChunk(r, n, step);
  }
}

SchedulerOutput Scheduler::Schedule() {
  CheckOrDie(!step_open_, "Schedule() called again before UpdateFromOutput() answered the plan");
  Step step;
  step.budget = config_.max_num_batched_tokens;
  step.out.scheduled_at = clock_->Now();
  if (config_.role != Role::kPrefill) {
    ScheduleDecodes(&step);
    GrantLookahead(&step);
  }
  if (config_.role != Role::kDecode) {
    ScheduleRunningPrefills(&step);
    AdmitWaiting(&step);
  }
  plan_.clear();
  auto record = [&](const RequestId& id, int64_t n, bool decode, bool completes,
                    int64_t lookahead) {
    Request* r = Find(id);
    plan_.push_back(PlanItem{id, r->serial, n, decode, completes, lookahead});
    r->step_tokens = 0;
    if (!r->first_scheduled_time.has_value()) r->first_scheduled_time = step.out.scheduled_at;
  };
  for (const DecodeEntry& d : step.out.decodes) record(d.id, 1, true, false, d.num_lookahead);
  for (const PrefillChunk& c : step.out.prefills) {
    record(c.id, static_cast<int64_t>(c.tokens.size()), false, c.completes_prompt, 0);
  }
  step_open_ = true;
  return std::move(step.out);
}

absl::Status Scheduler::UpdateFromOutput(const StepResult& result) {
  if (!step_open_) {
    return absl::FailedPreconditionError("UpdateFromOutput without an outstanding Schedule()");
  }
  absl::flat_hash_map<RequestId, size_t> index;  // plan item -> position in plan_
  for (size_t i = 0; i < plan_.size(); ++i) index.emplace(plan_[i].id, i);
  absl::flat_hash_map<RequestId, const RequestOutput*> outputs;
  for (const RequestOutput& o : result.outputs) {
    const std::string name = o.id.ToString();
    auto it = index.find(o.id);
    if (it == index.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", name, " was not scheduled in the last step"));
    }
    if (!outputs.emplace(o.id, &o).second) {
      return absl::InvalidArgumentError(absl::StrCat("request ", name, " has two outputs"));
    }
    if (!NodeMaySet(o.finish)) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", name, ": a node cannot finish a request with reason ",
                       std::string(FinishReasonName(o.finish))));
    }
    const PlanItem& item = plan_[it->second];
    if (!o.accepted_drafts.empty()) {
      const int64_t accepted = static_cast<int64_t>(o.accepted_drafts.size());
      if (!item.decode || accepted > item.lookahead) {
        return absl::InvalidArgumentError(absl::StrCat(
            "request ", name, ": ", accepted, " accepted drafts, but its plan item has room for ",
            item.decode ? item.lookahead : 0));
      }
      if (!o.token.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("request ", name, ": accepted drafts without the token after them"));
      }
      for (int32_t t : o.accepted_drafts) {
        if (t < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("request ", name, ": negative accepted draft ", t));
        }
      }
    }
    if (o.token.has_value()) {
      if (*o.token < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("request ", name, ": negative sampled token ", *o.token));
      }
      if (!item.decode && !item.completes_prompt) {
        return absl::InvalidArgumentError(
            absl::StrCat("request ", name,
                         ": its prefill chunk does not complete the prompt, so it "
                         "samples no token"));
      }
    }
  }
  for (const PlanItem& item : plan_) {
    const Request* r = Find(item.id);
    if (r == nullptr || r->serial != item.serial) continue;  // aborted since
    const bool needs_token =
        item.decode || (item.completes_prompt && config_.role == Role::kColocated);
    if (!needs_token) continue;
    auto it = outputs.find(item.id);
    if (it == outputs.end() ||
        (!it->second->token.has_value() && it->second->finish == FinishReason::kNone)) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", item.id.ToString(), ": ",
                       item.decode ? "its decode entry" : "its last prefill chunk",
                       " needs a sampled token or a finish reason"));
    }
  }

  step_open_ = false;
  for (const PlanItem& item : plan_) {
    Request* r = Find(item.id);
    if (r == nullptr || r->serial != item.serial) continue;
    auto it = outputs.find(item.id);
    const RequestOutput* o = it == outputs.end() ? nullptr : it->second;
    FinishReason reason = o == nullptr ? FinishReason::kNone : o->finish;
    if (o != nullptr && o->token.has_value()) {
      r->tokens.insert(r->tokens.end(), o->accepted_drafts.begin(), o->accepted_drafts.end());
      r->tokens.push_back(*o->token);
      ExtendHashes(r);
      if (reason == FinishReason::kNone && r->num_output_tokens() >= r->max_tokens) {
        reason = FinishReason::kLength;
      }
    }
    r->num_computed += item.num_tokens +
                       (o == nullptr ? 0 : static_cast<int64_t>(o->accepted_drafts.size()));
    CacheComputedBlocks(r);
    if (item.lookahead > 0) TrimLookahead(r);
    r->step_lookahead = 0;
    if (reason == FinishReason::kNone && item.completes_prompt && config_.role == Role::kPrefill) {
      reason = FinishReason::kPrefillDone;
    }
    if (reason != FinishReason::kNone) Finish(r, reason, "");
  }
  plan_.clear();
  return absl::OkStatus();
}

std::vector<FinishedRequest> Scheduler::TakeFinished() { return std::exchange(finished_, {}); }

int64_t Scheduler::num_pending_prefill_tokens() const {
  int64_t pending = 0;
  for (const auto& [id, r] : requests_)
    pending += std::max<int64_t>(0, r->prefill_end - r->num_computed);
  return pending;
}

int64_t Scheduler::num_block_refs() const {
  int64_t refs = 0;
  for (const Request* r : running_) refs += r->num_blocks();
  return refs;
}

std::optional<RequestInfo> Scheduler::Info(const RequestId& id) const {
  const Request* r = Find(id);
  if (r == nullptr) return std::nullopt;
  return RequestInfo{r->state,        r->num_tokens(), r->num_prompt_tokens, r->num_output_tokens(),
                     r->num_computed, r->num_blocks(), r->tail_slot,         r->num_preemptions,
                     r->num_prefix_hit_tokens};
}

absl::Status Scheduler::CheckInvariants() const {
  auto fail = [](const Request& r, const std::string& what) {
    return absl::InternalError(
        absl::StrCat("scheduler invariant: request ", r.id.ToString(), " ", what));
  };
  if (requests_.size() != running_.size() + waiting_.size()) {
    return absl::InternalError(absl::StrCat("scheduler invariant: ", requests_.size(),
                                            " requests but ", running_.size(), " running + ",
                                            waiting_.size(), " waiting"));
  }
  if (num_running() > config_.max_num_seqs) {
    return absl::InternalError(absl::StrCat("scheduler invariant: ", running_.size(),
                                            " running > max_num_seqs ", config_.max_num_seqs));
  }
  if (!std::is_sorted(running_.begin(), running_.end(), ByPrecedence) ||
      !std::is_sorted(waiting_.begin(), waiting_.end(), ByPrecedence)) {
    return absl::InternalError("scheduler invariant: a queue is out of order");
  }
  absl::flat_hash_set<int32_t> blocks_seen;
  absl::flat_hash_set<int32_t> slots_seen;
  for (const Request* r : running_) {
    if (r->state != RequestState::kRunning) return fail(*r, "is in running_ but not running");
    if (r->num_blocks() * config_.block_size < r->num_computed) {
      return fail(*r, "has a table that does not cover its computed positions");
    }
    if (r->num_computed > r->num_tokens() || r->prefill_end > r->num_tokens()) {
      return fail(*r, "counts more positions than tokens");
    }
    if (!r->prefilling() && r->num_tokens() != r->num_computed + 1) {
      return fail(*r, "decodes without exactly one token to run");
    }
    if (r->num_output_tokens() >= r->max_tokens) return fail(*r, "is past max_tokens");
    for (const int32_t b : r->block_table) {
      if (b < 0 || b >= blocks_->num_blocks() || blocks_->ref_count(b) == 0) {
        return fail(*r, absl::StrCat("holds block ", b, " that the pool does not"));
      }
      // Only cached blocks (a shared prefix) may be in two tables.
      if (!blocks_seen.insert(b).second && !blocks_->is_cached(b)) {
        return fail(*r, absl::StrCat("shares block ", b, ", which is not a cached prefix block"));
      }
    }
    if (r->tail_slot < 0 || r->tail_slot >= tail_slots_->num_blocks() ||
        tail_slots_->ref_count(r->tail_slot) == 0 || !slots_seen.insert(r->tail_slot).second) {
      return fail(*r, absl::StrCat("has a bad or shared tail slot ", r->tail_slot));
    }
  }
  for (const Request* r : waiting_) {
    if (r->state != RequestState::kWaiting || !r->block_table.empty() || r->tail_slot != -1 ||
        r->num_computed != 0) {
      return fail(*r, "waits while holding KV");
    }
  }
  return absl::OkStatus();
}

}  // namespace duet::sched
