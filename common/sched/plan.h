// What one scheduler step exchanges with its node: the plan Schedule() returns
// (SchedulerOutput), the results the node feeds back (StepResult), and the requests that left
// (FinishedRequest).
//
// A plan maps onto the Engine contract (common/engine/engine.h): each PrefillChunk is one
// Engine::Prefill(SequenceRef{block_table, num_cached, tail_slot}, tokens) call, and all
// DecodeEntries together are one Engine::DecodeStep with one DecodeItem{SequenceRef{...}, token}
// each. Block tables are copies of the sequence's whole table at schedule time and cover every
// position the item runs: block_table.size() * block_size >= num_cached + number of tokens.
#ifndef DUET_COMMON_SCHED_PLAN_H_
#define DUET_COMMON_SCHED_PLAN_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/base/ids.h"
#include "common/sched/request.h"

namespace duet::sched {

// One chunk of one sequence's prefill: tokens run at positions num_cached .. num_cached + n - 1.
struct PrefillChunk {
  RequestId id;
  int64_t num_cached = 0;            // committed positions before this chunk
  std::vector<int32_t> tokens;       // [n], n >= 1
  std::vector<int32_t> block_table;  // the sequence's whole table
  int32_t tail_slot = -1;            // in [0, max_sequences)
  // The last chunk: the logits of its last position sample the next token (COLOCATED: the
  // StepResult must carry it; PREFILL: optional, the node samples it and hands it on).
  bool completes_prompt = false;
};

// One decode token of one running sequence: `token` (its last token) runs at num_cached.
// Speculative decoding: the node may also verify up to num_lookahead drafted tokens after it
// (Engine::VerifyBatch of [token, d_1 .. d_j], j <= num_lookahead, then CommitBatch of the
// accepted prefix); the block table covers num_cached + 1 + num_lookahead positions.
struct DecodeEntry {
  RequestId id;
  int64_t num_cached = 0;
  int32_t token = 0;
  std::vector<int32_t> block_table;
  int32_t tail_slot = -1;
  int64_t num_lookahead = 0;
};

// A DECODE node's sequence preempted for lack of KV blocks: it has left the scheduler and its
// blocks and tail slot are free. The node sends it back to the router, which resumes it with a
// prefill of `tokens` (RequestSpec{prompt = first num_prompt_tokens, output = the rest}).
struct Preempted {
  RequestId id;
  std::vector<int32_t> tokens;  // prompt, then every generated token
  int64_t num_prompt_tokens = 0;
  int64_t num_output_tokens = 0;
};

struct SchedulerOutput {
  std::vector<DecodeEntry> decodes;    // scheduling order (priority, then arrival)
  std::vector<PrefillChunk> prefills;  // running prefills first, then new admissions
  std::vector<Preempted> preempted;    // DECODE role only (other roles requeue internally)
  int64_t num_decode_tokens = 0;
  int64_t num_prefill_tokens = 0;
  absl::Time scheduled_at;  // the scheduler's clock when the plan was made

  int64_t num_scheduled_tokens() const { return num_decode_tokens + num_prefill_tokens; }
  bool empty() const { return decodes.empty() && prefills.empty(); }
};

// The node's result for one item of the last plan.
struct RequestOutput {
  RequestId id;
  // The sampled token: required for every decode entry and, on COLOCATED nodes, for a chunk
  // that completes its prompt (unless `finish` is set); not allowed for other chunks.
  std::optional<int32_t> token;
  // Set by the node to end the request: kStop (its sampler), kLength, or kAborted.
  FinishReason finish = FinishReason::kNone;
  // Decode entries only: drafted tokens the verification accepted, which come before `token`
  // (at most the entry's num_lookahead; `token` is then required). The node committed
  // 1 + accepted_drafts.size() positions of the entry: its token and these drafts.
  std::vector<int32_t> accepted_drafts;
};

// Results for the last plan. Every item of the plan ran and committed its positions (a decode
// entry: its token and its accepted drafts); items
// without a token to report need no entry.
struct StepResult {
  std::vector<RequestOutput> outputs;
};

struct RequestTimes {
  absl::Time arrival;                         // AddRequest / AddRunning
  std::optional<absl::Time> first_scheduled;  // first plan that included it (queue time ends)
  absl::Time finished;
};

// A request that left the scheduler other than through Abort() or preemption to the router. Its
// blocks and tail slot are already released.
struct FinishedRequest {
  RequestId id;
  FinishReason reason = FinishReason::kNone;
  std::string detail;  // for kResourceExhausted: what it needed and what the pool has
  int64_t num_prompt_tokens = 0;
  std::vector<int32_t> output_tokens;  // every generated token (RequestSpec::output included)
  int64_t num_preemptions = 0;
  RequestTimes times;
};

}  // namespace duet::sched

#endif  // DUET_COMMON_SCHED_PLAN_H_
