// The iteration-level scheduler: a pure state machine (no engine, no gRPC, no device memory)
// that plans each model step of a node and takes the step's results back, as vLLM v1's
// scheduler does. The node's loop is:
//
//   SchedulerOutput plan = scheduler.Schedule();      // allocates the blocks the plan needs
//   ... hand plan.preempted to the router (DECODE role) ...
//   ... Engine::Prefill per chunk, one Engine::DecodeStep for the decode entries, sample ...
//   DUET_RETURN_IF_ERROR(scheduler.UpdateFromOutput(result));
//   for (FinishedRequest& f : scheduler.TakeFinished()) ... end f.id's stream ...
//
// One class serves the three node roles:
//   - PREFILL: AddRequest; requests get prefill chunks and leave (kPrefillDone) as soon as
//     their whole prompt is computed.
//   - DECODE: AddRunning with the KV already in the pool; one decode token per sequence per
//     step; sequences the pool cannot hold are preempted and reported to go back to the router.
//   - COLOCATED: both; a request decodes once its prompt is computed; preempted sequences are
//     requeued and recompute their prompt and generated tokens.
//
// Each step, capacity first, then budgets: decode entries first (oldest / most important
// first), then running prefills, then admissions from the waiting queue (FCFS by priority,
// stopping at the first that does not fit), each under max_num_seqs running sequences and
// max_num_batched_tokens tokens, with at most max_prefill_chunk_tokens per prefill chunk. Before
// an item joins the plan it gets the blocks its positions need; a running sequence that finds
// the pool empty preempts the least important running sequence (possibly itself) when
// enable_preemption is on, and otherwise waits. A new prefill chunk shrinks to the free blocks
// rather than preempting anyone. No admissions happen in a step that preempted.
//
// Without preemption the scheduler admits only what is guaranteed to fit (TensorRT-LLM's
// GUARANTEED_NO_EVICT): a request's worst case (its prompt, plus max_tokens - 1 decode positions
// outside the PREFILL role) must fit in the free blocks left after every running sequence's
// remaining worst case.
//
// Blocks: the pool is shared with the node. The scheduler holds one reference to each block in
// a sequence's table and to its tail slot, and releases them when the request finishes, is
// aborted or preempted. A node that needs them longer (a KV transfer still in flight, a prefix
// cache) Retain()s them on the pools before UpdateFromOutput finishes the request: e.g. on a
// PREFILL node, the block_table and tail_slot of a chunk with completes_prompt.
//
// Thread safety: not thread-safe; one thread drives a scheduler.
#ifndef DUET_COMMON_SCHED_SCHEDULER_H_
#define DUET_COMMON_SCHED_SCHEDULER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "common/base/clock.h"
#include "common/base/ids.h"
#include "common/kv/block_pool.h"
#include "common/sched/plan.h"
#include "common/sched/request.h"

namespace duet::sched {

enum class Role { kPrefill, kDecode, kColocated };

// The most drafted tokens one decode entry may verify (Engine's kMaxVerifyTokens - 1).
inline constexpr int64_t kMaxLookahead = 31;

std::string_view RoleName(Role role);  // "prefill", "decode", "colocated"

struct SchedulerConfig {
  Role role = Role::kColocated;
  // Most sequences running (holding KV) at once, hence most items in a plan.
  int64_t max_num_seqs = 64;
  // Most tokens in one plan (decode entries count 1). >= max_num_seqs, so every running
  // sequence gets its decode token every step.
  int64_t max_num_batched_tokens = 2048;
  // Most tokens of one prefill chunk, so a long prompt shares each step with short ones.
  int64_t max_prefill_chunk_tokens = 512;
  // Tokens per KV block (the engine's EngineOptions::block_size).
  int64_t block_size = 16;
  // FP8 tail slots (the engine's EngineOptions::max_sequences): one per running sequence.
  int64_t max_sequences = 64;
  bool enable_preemption = true;
  // Prefix caching (vLLM's automatic prefix caching): the scheduler hashes each request's full
  // blocks (kv/block_hash.h, with model_id and the request's cache_salt), registers every
  // block whose KV is computed in the pool's cache, and on admission reuses the longest cached
  // prefix of the prompt -- at most all but its last token, which must run to give logits --
  // so only the rest is prefilled. Off: no hashing, nothing cached.
  bool enable_prefix_caching = false;
  std::string model_id;

  // INVALID_ARGUMENT naming the field when a size is not positive or max_num_batched_tokens <
  // max_num_seqs.
  absl::Status Validate() const;
};

// A snapshot of one request (tests, debugging, metrics).
struct RequestInfo {
  RequestState state = RequestState::kWaiting;
  int64_t num_tokens = 0;  // prompt + generated
  int64_t num_prompt_tokens = 0;
  int64_t num_output_tokens = 0;
  int64_t num_computed = 0;
  int64_t num_blocks = 0;
  int32_t tail_slot = -1;
  int64_t num_preemptions = 0;
  // Prompt positions its last admission took from the prefix cache.
  int64_t num_prefix_hit_tokens = 0;
};

// Prefix-cache totals over admissions (vLLM's prefix_cache_queries / prefix_cache_hits).
struct PrefixCacheStats {
  int64_t queried_tokens = 0;  // prompt positions of admitted requests looked up
  int64_t hit_tokens = 0;      // of them, found cached (not recomputed)
};

class Scheduler {
 public:
  // REQUIRES: config.Validate().ok(); blocks and clock non-null and outlive the scheduler.
  // tail_slots: the FP8 tail-slot pool (REQUIRES num_blocks() == config.max_sequences), shared
  // with the node like `blocks`; nullptr: the scheduler owns one.
  Scheduler(const SchedulerConfig& config, kv::BlockPool* blocks, Clock* clock,
            kv::BlockPool* tail_slots = nullptr);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request for prefill (PREFILL and COLOCATED roles); it joins the next plan that has
  // room. Errors (nothing queued): FAILED_PRECONDITION on a DECODE node; ALREADY_EXISTS for an
  // id in the scheduler; INVALID_ARGUMENT for an empty prompt, a negative token id, or
  // max_tokens <= output.size(); RESOURCE_EXHAUSTED when its prompt (without preemption: its
  // worst case) needs more blocks than the whole pool has.
  absl::Status AddRequest(RequestSpec spec);

  // DECODE role: a sequence whose KV is in the pool for every token but the last (positions
  // [0, prompt.size() + output.size() - 1); usually output = {the prefill node's first token}).
  // Takes over the caller's reference to each of `blocks` (the sequence's table; it may hold
  // more blocks than the KV needs, for positions to come) and to `tail_slot` if >= 0 (one held
  // on the tail-slot pool), else allocates a tail slot. Decodes from the next plan on.
  // Errors (nothing taken): FAILED_PRECONDITION on another role or for blocks / a tail slot not
  // held in their pool; ALREADY_EXISTS; INVALID_ARGUMENT as AddRequest, or blocks that do not
  // cover the KV or repeat; RESOURCE_EXHAUSTED when max_num_seqs sequences run or no tail slot
  // is free.
  absl::Status AddRunning(RequestSpec spec, std::vector<int32_t> blocks, int32_t tail_slot = -1);

  // Speculative decoding: from the next plan on, give r's decode entries up to `lookahead`
  // positions for drafted tokens (DecodeEntry::num_lookahead), granted after every running
  // sequence has its decode token, from free blocks only (speculation never preempts), within
  // the token budget and never past max_tokens. 0 = plain decoding. NOT_FOUND for an unknown
  // id; INVALID_ARGUMENT outside [0, kMaxLookahead].
  absl::Status SetLookahead(const RequestId& id, int64_t lookahead);

  // Ends a request at once, releasing its blocks and tail slot; it appears in no FinishedRequest.
  // If it is in the outstanding plan the node must not run its item (its blocks may be reused)
  // and UpdateFromOutput ignores it. NOT_FOUND for an id not in the scheduler (never added,
  // finished, preempted to the router, or already aborted).
  absl::Status Abort(const RequestId& id);

  // Plans the next step and allocates the blocks it needs. REQUIRES: the previous plan was
  // answered by UpdateFromOutput (crashes otherwise: a broken node loop). Requests that cannot
  // fit even alone finish here (kResourceExhausted, see TakeFinished).
  SchedulerOutput Schedule();

  // Takes the results of the last plan: every item's positions are committed, sampled tokens
  // appended, and requests that finished (the node's reason, else kLength at max_tokens, else
  // kPrefillDone for a PREFILL node's completed prompt) leave, releasing their blocks and tail
  // slot. Errors change nothing and leave the plan outstanding: FAILED_PRECONDITION with no plan
  // outstanding; INVALID_ARGUMENT for an id not in the plan, a repeated id, a missing or
  // unexpected token, a negative token, or a finish reason other than stop/length/aborted.
  absl::Status UpdateFromOutput(const StepResult& result);

  // The requests that finished since the last call, in the order they finished.
  std::vector<FinishedRequest> TakeFinished();

  const SchedulerConfig& config() const { return config_; }
  bool has_requests() const { return !requests_.empty(); }
  bool step_outstanding() const { return step_open_; }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  // Prompt positions still to prefill over waiting and running requests (queue depth for the
  // router).
  int64_t num_pending_prefill_tokens() const;
  int64_t num_free_blocks() const { return blocks_->num_free(); }
  int64_t num_free_tail_slots() const { return tail_slots_->num_free(); }
  // References the scheduler's requests hold on blocks (a block shared by two tables, a cached
  // prefix, counts twice): the sum of the pool's ref counts when nothing else holds blocks.
  int64_t num_block_refs() const;
  // Preemptions since construction (requeued and reported to the router).
  int64_t num_preemptions() const { return num_preemptions_; }
  const PrefixCacheStats& prefix_cache_stats() const { return prefix_stats_; }
  const kv::BlockPool& tail_slot_pool() const { return *tail_slots_; }
  // nullopt for an id not in the scheduler.
  std::optional<RequestInfo> Info(const RequestId& id) const;

  // Checks the scheduler's invariants (queues ordered, limits, every sequence's blocks and tail
  // slot held and not shared with another sequence, tables covering the computed positions).
  // INTERNAL naming the first violation.
  absl::Status CheckInvariants() const;

 private:
  struct Step;
  struct PlanItem {
    RequestId id;
    uint64_t serial = 0;  // tells a request aborted and re-added under the same id
    int64_t num_tokens = 0;
    bool decode = false;
    bool completes_prompt = false;
    int64_t lookahead = 0;
  };
  enum class Grow { kOk, kStalled, kGone };

  Request* Find(const RequestId& id) const;
  int64_t BlocksFor(int64_t positions) const;
  int64_t WorstCaseBlocks(const Request& r) const;
  int64_t OutstandingReserve() const;
  // Positions r may run without new blocks beyond the free ones.
  int64_t Fit(const Request& r) const;
  absl::Status ValidateSpec(const RequestSpec& spec) const;
  std::unique_ptr<Request> NewRequest(RequestSpec spec);

  void ScheduleDecodes(Step* step);
  // Grants decode entries their lookahead positions (SetLookahead).
  void GrantLookahead(Step* step);
  // After a step: releases r's lookahead blocks that its committed positions do not need.
  void TrimLookahead(Request* r);
  void ScheduleRunningPrefills(Step* step);
  void AdmitWaiting(Step* step);
  // Grows r's table to cover `positions`, preempting as needed. kGone: r left running_.
  Grow GrowTo(Request* r, int64_t positions, Step* step);
  // Schedules a prefill chunk of running r (blocks permitting). kGone as GrowTo.
  Grow SchedulePrefillChunk(Request* r, Step* step);
  void AddChunk(Request* r, int64_t n, Step* step);
  void AddDecode(Request* r, Step* step);
  void Unschedule(Request* r, Step* step);
  void Preempt(Request* victim, Step* step);
  void ReleaseKv(Request* r);
  // Prefix caching: hashes r's newly full blocks; registers its computed full blocks.
  void ExtendHashes(Request* r) const;
  void CacheComputedBlocks(Request* r);
  // Cached leading blocks r may reuse at admission and how many of them are evictable now.
  struct PrefixHit {
    int64_t blocks = 0;
    int64_t evictable = 0;
  };
  PrefixHit LookupPrefix(Request* r) const;
  // Releases r's KV, records it as finished and destroys it.
  void Finish(Request* r, FinishReason reason, std::string detail);

  SchedulerConfig config_;
  kv::BlockPool* blocks_;
  Clock* clock_;
  std::unique_ptr<kv::BlockPool> owned_tail_slots_;
  kv::BlockPool* tail_slots_;

  absl::flat_hash_map<RequestId, std::unique_ptr<Request>> requests_;
  std::vector<Request*> running_;  // sorted by Request::Precedes
  std::vector<Request*> waiting_;  // sorted by Request::Precedes
  uint64_t next_serial_ = 0;
  int64_t num_preemptions_ = 0;
  PrefixCacheStats prefix_stats_;

  bool step_open_ = false;
  std::vector<PlanItem> plan_;  // the outstanding plan's items, in plan order
  std::vector<FinishedRequest> finished_;
};

}  // namespace duet::sched

#endif  // DUET_COMMON_SCHED_SCHEDULER_H_
