// Requests as the iteration-level scheduler sees them: what a caller submits (RequestSpec), why a
// request left (FinishReason), and the scheduler's own per-request state (Request).
//
// Token accounting follows vLLM v1: a request is a token list (prompt, then generated tokens)
// and `num_computed` positions of it have committed KV on this node. Every step moves
// num_computed toward the end of the list: a prefill chunk of a sequence, or one decode token.
#ifndef DUET_COMMON_SCHED_REQUEST_H_
#define DUET_COMMON_SCHED_REQUEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "common/base/ids.h"
#include "common/kv/block_hash.h"

namespace duet::sched {

// Why a request left the scheduler.
enum class FinishReason {
  kNone = 0,           // not finished (never in a FinishedRequest)
  kStop,               // the node's sampler: an EOS token or a stop string
  kLength,             // max_tokens generated (enforced by the scheduler)
  kAborted,            // the node ended it through a StepResult (client cancel, engine error)
  kPrefillDone,        // PREFILL role: its whole prompt is computed; a decode node continues
  kResourceExhausted,  // the sequence outgrew the whole KV pool: it cannot run even alone
};

// "none", "stop", "length", "aborted", "prefill_done", "resource_exhausted".
std::string_view FinishReasonName(FinishReason reason);

// What a node submits for one request.
struct RequestSpec {
  RequestId id;
  // Non-empty; token ids >= 0.
  std::vector<int32_t> prompt;
  // Tokens already generated for this request elsewhere, which count toward max_tokens:
  //   - AddRequest: a request resumed after a decode node preempted it (the prefill recomputes
  //     prompt + output and samples the next token), usually empty;
  //   - AddRunning: the first token the prefill node sampled.
  std::vector<int32_t> output;
  // The most tokens generated in all (output included); >= output.size() + 1.
  int64_t max_tokens = 1;
  // Lower runs first and is preempted last; ties go by arrival order at this scheduler (FCFS).
  int64_t priority = 0;
  // Prefix-cache namespace (GenerateRequest.cache_salt); used when the scheduler caches
  // prefixes (SchedulerConfig::enable_prefix_caching).
  std::string cache_salt;
  // False when `prompt` holds placeholders, not the real tokens (a decode node reserved without
  // the prompt's ids): its blocks are never hashed, cached or looked up.
  bool cacheable = true;
};

enum class RequestState { kWaiting, kRunning };

// The scheduler's state for one request (internal to Scheduler; nodes read RequestInfo).
struct Request {
  RequestId id;
  uint64_t serial = 0;  // arrival order at this scheduler; unique, never reused
  int64_t priority = 0;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int64_t num_prompt_tokens = 0;
  int64_t max_tokens = 0;
  // Positions [0, num_computed) have committed KV in block_table.
  int64_t num_computed = 0;
  // The prefill phase runs positions [num_computed, prefill_end); set to tokens.size() when the
  // request is (re)admitted, so a request preempted by recompute prefills its generated tokens
  // too. Decoding once num_computed == prefill_end (then tokens.size() == num_computed + 1).
  int64_t prefill_end = 0;
  std::vector<int32_t> block_table;  // block ids of the KV pool, in position order
  int32_t tail_slot = -1;            // held while running; -1 while waiting
  RequestState state = RequestState::kWaiting;
  int64_t num_preemptions = 0;
  // Prefix caching: the hashes of the full blocks of `tokens` known so far
  // (kv::HashBlocks, extended as tokens are appended), how many leading blocks of the table
  // are registered in the pool's cache, and the prompt positions the last admission found
  // cached (not recomputed).
  std::string cache_salt;
  bool cacheable = true;
  std::vector<kv::BlockHash> block_hashes;
  int64_t num_cached_blocks = 0;
  int64_t num_prefix_hit_tokens = 0;
  // Speculative decoding: drafted positions the node asks for each decode step (SetLookahead),
  // those granted in the plan being built or outstanding, and the table's size before the
  // grant (blocks past it that the accepted tokens do not need are released after the step).
  int64_t lookahead = 0;
  int64_t step_lookahead = 0;
  int64_t blocks_before_lookahead = 0;
  absl::Time arrival_time;
  std::optional<absl::Time> first_scheduled_time;
  // Tokens in the plan being built by Schedule() (0: not in it); step_decode tells its kind.
  int64_t step_tokens = 0;
  bool step_decode = false;

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  int64_t num_blocks() const { return static_cast<int64_t>(block_table.size()); }
  bool prefilling() const { return num_computed < prefill_end; }
  // Scheduling order: more important (lower priority value), then earlier arrival.
  bool Precedes(const Request& other) const {
    return priority != other.priority ? priority < other.priority : serial < other.serial;
  }
};

}  // namespace duet::sched

#endif  // DUET_COMMON_SCHED_REQUEST_H_
