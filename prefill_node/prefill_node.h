// The prefill node (duet.v1.PrefillService): computes a prompt's KV and first token and streams
// the KV, layer group by layer group as it is produced, into the decode node's reservation.
//
// Threads: one worker drives the engine and the scheduler (PREFILL role: chunked prefill under
// the token budget, no preemption); one KvSender thread per request holds its PushKv call
// (prefill_node/kv_sender.h); gRPC handlers only check and enqueue. Shared state is under mu_.
//
// Per prefill chunk the worker calls Engine::Prefill with a PrefillObserver: after each group of
// layers, kv::KvTransferPlanner::OnBlocksReady says which (layer, block) cells became final (a
// chunk completes floor(end / block_size) blocks; the prompt's end completes all), the worker
// ExportKv's them and hands the chunks to the sender, which writes them while the next group
// computes. The chunk with `last` waits for the first token, sampled from the final chunk's
// logits (node/completion.h: the request's sampling parameters, token seed 0). Prefill returns
// once the decode node acknowledged the transfer.
//
// Failures: a PushKv that fails (decode node gone or rejecting) stops the request at once (the
// observer fails the Prefill in flight), frees its blocks and fails the Prefill RPC with the
// sender's status (UNAVAILABLE / ABORTED naming the decode node). The router cancelling Prefill
// aborts the transfer (abort chunk + cancelled PushKv) and frees the blocks at once.
//
// Prefix caching: the scheduler reuses the longest cached prefix of a prompt (kv/block_hash.h,
// PrefillNodeOptions::enable_prefix_caching); its KV is exported from the cache and sent first,
// before the first chunk computes, and the response's cached_prompt_tokens counts it.
#ifndef DUET_PREFILL_NODE_PREFILL_NODE_H_
#define DUET_PREFILL_NODE_PREFILL_NODE_H_

#include <prometheus/histogram.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
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
#include "common/model/tokenizer.h"
#include "common/sched/scheduler.h"
#include "duet/v1/internal.grpc.pb.h"
#include "node/completion.h"
#include "prefill_node/kv_sender.h"

namespace duet::prefill {

struct PrefillNodeOptions {
  std::string node_id = "prefill";
  std::string model_id;  // checked against requests' model_id
  // Scheduler budgets; max_num_seqs must equal the engine's EngineOptions::max_sequences.
  int64_t max_num_seqs = 64;
  int64_t max_num_batched_tokens = 2048;
  int64_t prefill_chunk_tokens = 512;
  // Layers per observer group (0 = a quarter of the model's layers, at least 1), and the
  // payload budget of one KvChunk.
  int64_t layers_per_group = 0;
  int64_t max_chunk_bytes = int64_t{4} << 20;
  absl::Duration retry_after = absl::Milliseconds(200);  // hint with UNAVAILABLE (draining)
  // Test-only fault injection: the payloads of the first this many KvChunks the node sends are
  // corrupted after their checksum was computed (decode nodes must reject them: DATA_LOSS).
  int64_t test_corrupt_kv_chunks = 0;
  // Prefix caching (sched::SchedulerConfig::enable_prefix_caching, hashing with model_id and
  // the request's cache_salt): a prompt reuses this node's cached KV of its longest cached
  // prefix, which is sent to the decode node as it is, and only the rest is prefilled.
  bool enable_prefix_caching = true;
  // Metrics (null = none; owned by the caller, outlive the node).
  prometheus::Histogram* kv_transfer_latency = nullptr;
  prometheus::Histogram* prefill_batch_tokens = nullptr;
  Clock* clock = nullptr;                                // null = Clock::Real()
};

class PrefillNode final : public v1::PrefillService::CallbackService {
 public:
  // Starts the worker. `engine` and `tokenizer` are not owned and must outlive the node.
  // INVALID_ARGUMENT for bad budgets.
  static absl::StatusOr<std::unique_ptr<PrefillNode>> Create(const PrefillNodeOptions& options,
                                                             Engine* engine,
                                                             const Tokenizer* tokenizer);
  ~PrefillNode() override;  // Stop()s
  PrefillNode(const PrefillNode&) = delete;
  PrefillNode& operator=(const PrefillNode&) = delete;

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const v1::PrefillRequest* request,
                                    v1::PrefillResponse* response) override;

  // Drain: Prefill answers UNAVAILABLE from now on; requests in flight (and their transfers)
  // finish.
  void StartDrain();
  // True once no request is queued, prefilling or transferring.
  bool AwaitDrained(absl::Duration timeout);
  // Stops the worker; requests in flight fail with UNAVAILABLE and their transfers are aborted.
  void Stop();

  v1::NodeLoad Load() const;
  // The prefix cache's changes since the last call, or (snapshot, or events were dropped)
  // every cached block, for the router's KV-aware routing. Thread-safe.
  v1::KvCacheEvents TakeKvEvents(bool snapshot);
  // Event counts for NodeAdmin.GetStatus (v1::NodeStatus.counters). Thread-safe.
  void AddCounters(google::protobuf::Map<std::string, int64_t>* counters) const;
  int64_t total_kv_blocks() const { return total_blocks_; }
  int32_t block_size() const { return static_cast<int32_t>(engine_->kv_layout().block_size); }
  v1::KvDtype kv_dtype() const;

  // For tests.
  struct Snapshot {
    int64_t free_blocks = 0;
    int64_t num_requests = 0;  // queued, prefilling or transferring
  };
  Snapshot GetSnapshot() const;
  bool AwaitState(const std::function<bool(const Snapshot&)>& pred, absl::Duration timeout);

 private:
  struct Job;
  class PrefillReactor;
  using Task = std::function<void(bool stopped)>;  // as DecodeNode's

  PrefillNode(const PrefillNodeOptions& options, Engine* engine, const Tokenizer* tokenizer);

  // prefill_node.cc
  // Creates the job, queues it and attaches `reactor` (which FinishJob finishes), all under mu_.
  // On error nothing is queued and the caller finishes the reactor.
  absl::StatusOr<std::shared_ptr<Job>> NewJob(const v1::PrefillRequest& request,
                                              v1::PrefillResponse* response,
                                              PrefillReactor* reactor);
  absl::StatusOr<std::shared_ptr<grpc::Channel>> ChannelFor(const std::string& address)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Post(Task task);
  void CancelJob(const RequestId& id, uint64_t serial) ABSL_LOCKS_EXCLUDED(mu_);
  void OnTransferDone(const RequestId& id, uint64_t serial, KvSender::Result result)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ends the job's RPC (once) and moves the job out of the table; the worker destroys it.
  void FinishJob(Job& job, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Snapshot SnapshotLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // prefill_worker.cc
  void WorkerLoop();
  bool RunStep();
  // Runs one chunk; the job's failure status on error.
  absl::Status RunChunk(Job& job, const sched::PrefillChunk& chunk);
  v1::KvChunk MakeChunk(const Job& job, const kv::ChunkRect& rect, std::vector<uint8_t> payload,
                        int32_t first_token) const;

  const PrefillNodeOptions options_;
  Clock* const clock_;
  Engine* const engine_;  // worker thread only
  const Tokenizer* const tokenizer_;
  const int32_t vocab_size_;
  const int64_t total_blocks_;
  const int64_t layers_per_group_;

  // Counters (MakeChunk runs on the worker without mu_).
  mutable std::atomic<int64_t> num_chunks_sent_{0};
  mutable std::atomic<int64_t> num_faults_injected_{0};
  std::atomic<int64_t> num_transfers_failed_{0};
  // Completed transfers: payload bytes, prompt tokens, time from the first chunk written to the
  // decode node's ack, and from the last layer's KV being ready to that ack (what the transfer
  // adds to time to first token).
  std::atomic<int64_t> num_bytes_sent_{0};
  std::atomic<int64_t> num_tokens_sent_{0};
  std::atomic<int64_t> transfer_us_{0};
  std::atomic<int64_t> tail_us_{0};

  mutable absl::Mutex mu_;
  kv::BlockPool blocks_ ABSL_GUARDED_BY(mu_);
  kv::BlockPool tail_slots_ ABSL_GUARDED_BY(mu_);
  sched::Scheduler scheduler_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<RequestId, std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Job>> retired_ ABSL_GUARDED_BY(mu_);  // destroyed by the worker
  absl::flat_hash_map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
  uint64_t next_serial_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

// One Prefill call (internal to PrefillNode).
struct PrefillNode::Job {
  Job(const Tokenizer* tokenizer, node::RequestSampling sampling, std::vector<int32_t> ids,
      int32_t vocab_size, kv::KvTransferPlanner transfer_planner)
      : prompt(std::move(ids)),
        completion(tokenizer, std::move(sampling), prompt, vocab_size),
        planner(std::move(transfer_planner)) {}

  RequestId id;
  uint64_t serial = 0;
  v1::PrefillRequest request;  // decode address, reservation id
  std::vector<int32_t> prompt;
  node::Completion completion;    // samples the first token (worker only)
  kv::KvTransferPlanner planner;  // worker only
  std::unique_ptr<KvSender> sender;
  // Set under mu_:
  grpc::ServerUnaryReactor* reactor = nullptr;  // null once finished
  v1::PrefillResponse* response = nullptr;
  bool in_scheduler = false;  // queued or prefilling
  bool awaiting_ack = false;  // the last chunk is with the sender
  absl::Status failure;       // why it stopped (the RPC's status)
  // Worker only:
  std::optional<kv::ChunkRect> held_last;  // the `last` rectangle, sent with the first token
  int64_t cached_tokens = 0;               // prompt positions taken from the prefix cache
  std::vector<uint8_t> held_payload;
  absl::Time arrival, first_chunk, prefill_done;
  absl::Time prefill_done_wall;  // absl::Now(), comparable with KvSender::Result times
  bool started = false;
};

}  // namespace duet::prefill

#endif  // DUET_PREFILL_NODE_PREFILL_NODE_H_
