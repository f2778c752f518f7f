// The decode node (duet.v1.DecodeService): receives a request's prompt KV from a prefill node
// into reserved blocks, then decodes it with continuous (iteration-level) batching and streams
// the tokens. With role COLOCATED it also serves Run: whole requests, prefill and decode, on
// this node.
//
// Threads: one worker thread drives the engine (engines are not thread-safe) and the scheduler;
// gRPC handlers only parse, check, and hand work to it. Handlers and the worker share the
// node's state under mu_: the KV block pool, the FP8 tail-slot pool, the reservation table, the
// scheduler and the request table. The worker calls the engine without mu_ except for
// ImportKv, which it runs under mu_ right after checking that the reservation is still live.
//
// One disaggregated request (internal.proto has the RPC contracts):
//   Reserve       the prompt's blocks (kv::ReservationTable, under a lease) and a tail slot;
//   PushKv        each chunk: kv::KvTransferReceiver checks it, the lease is renewed and the
//                 payload imported (Engine::ImportKv, on the worker). Any error or an abort
//                 chunk frees the reservation at once and fails the call; after the `last`
//                 chunk the blocks and tail slot go to the scheduler (AddRunning) with the first
//                 token, unless that token already ends the completion;
//   StreamTokens  the request's TokenEvents, buffered from Reserve on (node/token_stream.h).
//                 Cancelling it aborts the request and frees its blocks.
// A request whose KV never comes is freed when its lease expires (the stream then ends with
// ABORTED). A sequence the scheduler preempts for lack of KV blocks ends its stream with
// UNAVAILABLE "preempted: KV pool exhausted; retry" and a retry-after hint: nothing resumes it
// yet (the router may retry the request when no token was streamed).
//
// Speculative decoding (node/speculator.h) when the node has a speculator and the request asks
// for it (ReserveRequest.speculation / RunRequest.speculation ON, resolved by the router).
//
// Not yet: Reserve on COLOCATED nodes (the scheduler's COLOCATED role has
// no AddRunning; such nodes answer Reserve with FAILED_PRECONDITION and serve Run only).
#ifndef DUET_DECODE_NODE_DECODE_NODE_H_
#define DUET_DECODE_NODE_DECODE_NODE_H_

#include <prometheus/histogram.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/base/clock.h"
#include "common/base/ids.h"
#include "common/engine/engine.h"
#include "common/kv/block_pool.h"
#include "common/kv/kv_transfer.h"
#include "common/kv/reservations.h"
#include "common/model/tokenizer.h"
#include "common/sched/scheduler.h"
#include "duet/v1/internal.grpc.pb.h"
#include "node/completion.h"
#include "node/speculator.h"
#include "node/token_stream.h"

namespace duet::decode {

struct DecodeNodeOptions {
  sched::Role role = sched::Role::kDecode;  // kDecode or kColocated
  std::string node_id = "decode";           // prefixes reservation ids ("<node_id>/res-<n>")
  std::string model_id;                     // checked against requests' model_id
  // Scheduler budgets. max_num_seqs is also the number of tail slots: REQUIRES it equals the
  // engine's EngineOptions::max_sequences.
  int64_t max_num_seqs = 64;
  int64_t max_num_batched_tokens = 2048;
  int64_t prefill_chunk_tokens = 512;
  // Prefix caching. Colocated role: as on prefill nodes (PrefillNodeOptions). Decode role: the
  // blocks of running sequences (prompt and generated tokens) stay cached, and a Reserve whose
  // prompt starts with cached blocks takes them instead of receiving them again
  // (ReserveResponse.num_cached_blocks).
  bool enable_prefix_caching = true;
  // A request that finished (or failed) before its StreamTokens opened keeps its result this
  // long.
  absl::Duration unclaimed_retention = absl::Seconds(60);
  // Retry-after hint of RESOURCE_EXHAUSTED (pool full) and UNAVAILABLE (draining, preempted).
  absl::Duration retry_after = absl::Milliseconds(200);
  Clock* clock = nullptr;  // leases and scheduler times; null = Clock::Real()
  // Test-only: sleep this long after every decode step, so that tests which kill or cancel
  // mid-stream find a tiny model's requests still streaming.
  absl::Duration test_step_delay = absl::ZeroDuration();
  // Metrics (null = none; owned by the caller, outlives the node).
  prometheus::Histogram* decode_batch_size = nullptr;
  // Speculative decoding (null = off; used only by the worker thread).
  std::shared_ptr<node::Speculator> speculator;
};

class DecodeNode final : public v1::DecodeService::CallbackService {
 public:
  // Starts the worker. `engine` and `tokenizer` are not owned and must outlive the node.
  // INVALID_ARGUMENT for a bad role or scheduler budget.
  static absl::StatusOr<std::unique_ptr<DecodeNode>> Create(const DecodeNodeOptions& options,
                                                            Engine* engine,
                                                            const Tokenizer* tokenizer);
  // Stop()s.
  ~DecodeNode() override;
  DecodeNode(const DecodeNode&) = delete;
  DecodeNode& operator=(const DecodeNode&) = delete;

  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* context,
                                    const v1::ReserveRequest* request,
                                    v1::ReserveResponse* response) override;
  grpc::ServerReadReactor<v1::KvChunk>* PushKv(grpc::CallbackServerContext* context,
                                               v1::PushKvResponse* response) override;
  grpc::ServerWriteReactor<v1::TokenEvent>* StreamTokens(
      grpc::CallbackServerContext* context, const v1::StreamTokensRequest* request) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseResponse* response) override;
  grpc::ServerWriteReactor<v1::TokenEvent>* Run(grpc::CallbackServerContext* context,
                                                const v1::RunRequest* request) override;

  // Drain: Reserve and Run answer UNAVAILABLE from now on; work in flight continues.
  void StartDrain();
  // Waits until no request is reserved, transferring, queued or decoding (results nobody has
  // collected do not count). True when drained.
  bool AwaitDrained(absl::Duration timeout);
  // Stops the worker; requests in flight fail with UNAVAILABLE, later calls too. Idempotent.
  // Shut the gRPC server down first to let its calls end cleanly.
  void Stop();

  // For heartbeats. Thread-safe.
  v1::NodeLoad Load() const;
  // Event counts for NodeAdmin.GetStatus (v1::NodeStatus.counters). Thread-safe.
  void AddCounters(google::protobuf::Map<std::string, int64_t>* counters) const;
  int64_t total_kv_blocks() const { return total_blocks_; }
  int32_t block_size() const { return static_cast<int32_t>(engine_->kv_layout().block_size); }
  v1::KvDtype kv_dtype() const;

  // For tests: wakes the worker (e.g. after advancing a FakeClock), and state snapshots.
  void Kick();
  struct Snapshot {
    int64_t free_blocks = 0;
    int64_t free_tail_slots = 0;
    int64_t num_reservations = 0;
    int64_t num_requests = 0;  // in the request table, collected or not
    int64_t num_running = 0;
    int64_t num_waiting = 0;
    int64_t num_chunks_accepted = 0;  // KvChunks imported since the node started
    int64_t num_open_streams = 0;     // requests in flight whose token stream is open
    int64_t num_preemptions = 0;      // by the scheduler, since the node started
  };
  Snapshot GetSnapshot() const;
  // Waits until `pred` holds for the node's state. True when it did within `timeout`.
  bool AwaitState(const std::function<bool(const Snapshot&)>& pred, absl::Duration timeout);

 private:
  class PushKvReactor;
  struct Request;
  // Work for the worker. Called with stopped = false on the worker, or with stopped = true
  // (anywhere) once the node has stopped: then it must only end its RPC with UNAVAILABLE.
  using Task = std::function<void(bool stopped)>;
  enum class Phase { kReserved, kRunning, kDone };

  DecodeNode(const DecodeNodeOptions& options, Engine* engine, const Tokenizer* tokenizer);

  // ---- decode_node.cc: RPC checks and request bookkeeping ----
  absl::StatusOr<node::RequestSampling> CheckSampling(const v1::SamplingParams& sampling,
                                                      int64_t num_prompt_tokens) const;
  absl::Status CheckModel(const std::string& model_id) const;
  absl::StatusOr<v1::ReserveResponse> DoReserve(const v1::ReserveRequest& request);
  // Client cancelled a token stream: aborts the request (now if reserved, else on the worker).
  void CancelRequest(const RequestId& id, uint64_t serial) ABSL_LOCKS_EXCLUDED(mu_);
  // Worker: ends a queued or running request (scheduler Abort) and fails its stream.
  void AbortRunning(Request& r, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts a new request into the table (replacing a finished one of the same id) under a fresh
  // serial. ALREADY_EXISTS when one with that id is in flight.
  absl::Status Insert(const std::shared_ptr<Request>& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Post(Task task);
  // Errors for new work while draining / stopped; OK otherwise.
  absl::Status AcceptingWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Snapshot SnapshotLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- decode_worker.cc: the worker ----
  void WorkerLoop();
  // How long the idle worker may sleep: until the next lease or retention deadline.
  absl::Duration IdleWait() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLeases();
  // One scheduler step. False when there was nothing to run.
  bool RunStep();
  // Records a sampled token: stop checks, the sink, and the scheduler's output for it.
  sched::RequestOutput Emit(Request& r, int32_t token,
                            const std::optional<v1::TokenLogprobs>& logprobs);
  sched::RequestOutput SampleAndEmit(Request& r, absl::Span<const float> logits);
  // Records a speculative step's tokens (kept drafts, then the next token) up to the first
  // that ends the completion.
  sched::RequestOutput EmitSeveral(Request& r, absl::Span<const int32_t> tokens);
  // Speculation before Schedule(): each running sequence's lookahead.
  void SetLookaheads() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The decode entries of `plan` on the engine, speculatively when any has lookahead.
  void RunDecodes(const sched::SchedulerOutput& plan,
                  const std::vector<std::shared_ptr<Request>>& decoding,
                  sched::StepResult* result);
  // One KvChunk of a PushKv call, on the worker. Returns OK with *done when the transfer
  // completed, OK with !*done to go on, or the error that ends the call.
  absl::Status HandleChunk(PushKvReactor* reactor, const v1::KvChunk& chunk, bool* done)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status HandleChunkLocked(PushKvReactor* reactor, const v1::KvChunk& chunk, bool* done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The transfer completed: the blocks go to the scheduler with the first token.
  absl::Status StartDecoding(Request& r, const v1::KvChunk& last)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The PushKv call ended (the client half-closed or cancelled) before the transfer completed:
  // frees the reservation; returns the call's status.
  absl::Status EndOfTransfer(PushKvReactor* reactor) ABSL_LOCKS_EXCLUDED(mu_);
  void TransferCancelled(PushKvReactor* reactor) ABSL_LOCKS_EXCLUDED(mu_);
  // Frees a reserved request's reservation and tail slot and fails its stream with `status`
  // (no-op unless it is still reserved). FailReserved: the same for a failed transfer, whose
  // message it prefixes with "KV transfer for request ... failed: ".
  void DropReserved(Request& r, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailReserved(Request& r, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The request is over: drops it from the table, or keeps it for its StreamTokens to collect.
  void MarkDone(Request& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<Request> Find(const RequestId& id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const DecodeNodeOptions options_;
  Clock* const clock_;
  Engine* const engine_;  // worker thread only (ImportKv under mu_)
  const Tokenizer* const tokenizer_;
  const int32_t vocab_size_;
  const int64_t total_blocks_;

  mutable absl::Mutex mu_;
  kv::BlockPool blocks_ ABSL_GUARDED_BY(mu_);
  kv::BlockPool tail_slots_ ABSL_GUARDED_BY(mu_);
  kv::ReservationTable reservations_ ABSL_GUARDED_BY(mu_);
  sched::Scheduler scheduler_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<RequestId, std::shared_ptr<Request>> requests_ ABSL_GUARDED_BY(mu_);
  uint64_t next_serial_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t num_chunks_accepted_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t num_transfers_failed_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t num_checksum_errors_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t num_leases_expired_ ABSL_GUARDED_BY(mu_) = 0;
  sched::PrefixCacheStats reserve_prefix_stats_ ABSL_GUARDED_BY(mu_);  // decode role
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  // Speculation: ended requests whose speculator state the worker frees, and the totals.
  std::vector<uint64_t> spec_released_ ABSL_GUARDED_BY(mu_);
  node::SpeculationStats spec_stats_ ABSL_GUARDED_BY(mu_);
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

// One request on the node (internal to DecodeNode).
struct DecodeNode::Request {
  Request(const Tokenizer* tokenizer, node::RequestSampling sampling, std::vector<int32_t> ids,
          int32_t vocab_size)
      : prompt(std::move(ids)), completion(tokenizer, std::move(sampling), prompt, vocab_size) {}

  RequestId id;
  uint64_t serial = 0;         // tells a request from a later one with the same id
  std::string reservation_id;  // "" for Run
  Phase phase = Phase::kReserved;
  int64_t num_prompt_tokens = 0;
  std::vector<int32_t> prompt;  // may be empty for Reserve (then placeholders for the scheduler)
  int32_t tail_slot = -1;       // held by the request while kReserved
  bool transfer_started = false;
  bool stream_opened = false;                        // StreamTokens (or Run) attached to the sink
  bool prefill_started = false;                      // Run: its first prefill chunk ran
  int64_t num_present_blocks = 0;  // Reserve: leading blocks the prefix cache had (not sent)
  std::string cache_salt;                            // Run: RunRequest.cache_salt
  bool speculate = false;  // the request asked for speculative decoding
  std::unique_ptr<kv::KvTransferReceiver> receiver;  // from the first chunk on
  std::shared_ptr<node::TokenSink> sink;
  absl::Time done_at;           // when it became kDone
  absl::Status error;           // why the worker ended it (engine error)
  node::Completion completion;  // worker thread only
};

}  // namespace duet::decode

#endif  // DUET_DECODE_NODE_DECODE_NODE_H_
