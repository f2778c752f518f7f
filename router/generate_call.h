// One Duet.Generate call: a server-streaming reactor (gRPC's callback API) plus one worker
// thread that runs the request through the cluster with blocking client calls.
//
// Flow (proto/duet/v1/internal.proto): validate + tokenize -> admission -> pick a decode node
// -> Reserve -> StreamTokens (opened at once) -> pick a prefill node -> Prefill (asynchronous,
// while the worker relays the token stream). A colocated node gets the whole request through
// DecodeService.Run instead. Tokens go through a TokenRelay (text deltas, stop conditions).
//
// Failures and cancellation:
//   - client cancel (OnCancel) or a client that goes away (a failed write): every node call is
//     cancelled at once (ClientContext::TryCancel) and the reservation is released.
//   - a node lost (missed heartbeats, re-registration): its calls are cancelled; the request ends
//     with UNAVAILABLE naming the node.
//   - before any token reached the client, a failed attempt (Reserve refused, Prefill failed,
//     decode stream failed, node lost) is retried once on other nodes, after releasing the
//     reservation; afterwards the request ends with a final FINISH_REASON_ERROR message and the
//     error status.
// Writes to the client are flow-controlled: the worker waits while kMaxPendingWrites messages
// are queued, so a slow client slows the relay instead of growing memory.
//
// Lifetime: created by the Generate handler; deletes itself once gRPC has called OnDone and the
// worker has exited.
#ifndef DUET_ROUTER_GENERATE_CALL_H_
#define DUET_ROUTER_GENERATE_CALL_H_

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>
#include <grpcpp/support/sync_stream.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "duet/v1/duet.pb.h"
#include "duet/v1/internal.grpc.pb.h"
#include "router/node_registry.h"
#include "router/router_state.h"
#include "router/token_relay.h"
#include "router/validate.h"

namespace duet::router {

class GenerateCall final : public grpc::ServerWriteReactor<duet::v1::GenerateResponse>,
                           public InflightCall {
 public:
  // Messages queued for the client before the worker waits.
  static constexpr size_t kMaxPendingWrites = 16;

  // Creates the reactor and starts its worker. REQUIRES: state outlives the call (the server
  // shuts down and RouterState::WaitForWorkers returns before state is destroyed).
  static GenerateCall* Start(RouterState* state, grpc::CallbackServerContext* context,
                             const duet::v1::GenerateRequest& request);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;
  void OnNodeLost(const LostNode& node) override;

 private:
  // The result of one attempt at running the request on a set of nodes.
  struct Attempt {
    absl::Status status;     // OK: finished (final_ holds the last delta)
    bool retriable = false;  // nothing reached the client; other nodes may succeed
    bool preempted = false;  // the decode node preempted the request: resume it
    std::optional<NodeId> exclude_decode;
    std::optional<NodeId> exclude_prefill;
  };
  // The asynchronous Prefill of one attempt.
  struct PrefillCall {
    NodeAssignment node;
    grpc::ClientContext context;
    duet::v1::PrefillRequest request;
    duet::v1::PrefillResponse response;
    bool done = false;  // guarded by GenerateCall::mu_
    grpc::Status status;
  };

  GenerateCall(RouterState* state, grpc::CallbackServerContext* context,
               const duet::v1::GenerateRequest& request);
  ~GenerateCall() override = default;
  void Unref();

  // ---- Worker (generate_flow.cc) ----
  void Run();
  absl::Status Execute();
  Attempt RunDisaggregated(const NodeAssignment& decode, const PickOptions& prefill_pick);
  Attempt RunColocated(const NodeAssignment& node);
  // Reads `reader` to its end, relaying tokens; returns the call's status. Sets *relay_error
  // when the node sent something the relay rejects (the stream is then cancelled).
  grpc::Status RelayStream(grpc::ClientReaderInterface<duet::v1::TokenEvent>* reader,
                           grpc::ClientContext* context, absl::Status* relay_error);
  void ReleaseReservation(duet::v1::DecodeService::Stub* stub, const NodeAssignment& decode,
                          const std::string& reservation_id, const std::string& reason);
  void OnPrefillDone(PrefillCall* prefill, grpc::Status status);
  // The relay finished with a reason other than FINISH_REASON_ERROR (a node's failure report).
  bool FinishedOk() const;
  // INTERNAL for a stream that ended OK without a proper finish.
  absl::Status BadEnd(const NodeAssignment& node) const;
  void LeaveQueue();
  // The prompt plus the completion tokens the attempt resumes from (num_resumed_).
  std::vector<int32_t> AttemptTokens() const;
  // Sleeps `*backoff` (doubling it, up to 100 ms) before another try for capacity. False --
  // without sleeping -- when that would pass `wait_until` or the call's deadline, or the client
  // cancelled.
  bool WaitForCapacity(absl::Time wait_until, absl::Duration* backoff);
  void SendHeaderOnce();

  // ---- Node calls ----
  // Sets the request's deadline on `context` and makes it cancellable by OnCancel/OnNodeLost
  // (cancelled at once when that already happened). Untrack before destroying the context.
  void Track(grpc::ClientContext* context, const NodeAssignment& node);
  void Untrack(grpc::ClientContext* context);
  bool client_cancelled();
  // Why `node` was lost while this call was in flight, or nullopt.
  std::optional<std::string> LostReason(const NodeAssignment& node);

  // ---- Client stream ----
  // Queues a message (waiting while kMaxPendingWrites are queued). False when the client is
  // gone or cancelled.
  bool Send(duet::v1::GenerateResponse message);
  // Finishes the RPC with `status` once the queued messages are written.
  void End(const absl::Status& status);
  void CancelLocked(std::string_view why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RouterState* const state_;
  const duet::v1::GenerateRequest request_;
  const std::string request_id_;  // router-assigned, sent to nodes
  // Deadline of every node call; time_point::max() = none.
  const std::chrono::system_clock::time_point deadline_;
  std::atomic<int> refs_{2};  // the reactor (until OnDone) and the worker

  // Worker-only state.
  std::string client_request_id_;  // echoed in responses
  std::optional<ResolvedRequest> resolved_;
  std::optional<TokenRelay> relay_;
  bool queued_ = false;
  bool header_sent_ = false;
  duet::v1::GenerateResponse final_;       // the last delta (with finish_reason) once finished
  int64_t cached_prompt_tokens_ = 0;       // Usage.cached_prompt_tokens of the result
  int64_t node_cached_prompt_tokens_ = 0;  // from the node's final TokenEvent.usage
  // Every completion token relayed to the client so far, over all attempts.
  std::vector<int32_t> generated_;
  // Completion tokens the current attempt resumes from (after a decode node preempted the
  // request): the attempt's sequence is the prompt plus generated_[0, num_resumed_).
  int64_t num_resumed_ = 0;
  // The current attempt's decode node preempted the request (its last TokenEvent).
  bool preempted_ = false;
  // For metrics: when Run started, and when the first and the latest tokens were relayed.
  absl::Time started_ = absl::InfinitePast();
  absl::Time first_token_at_ = absl::InfinitePast();
  absl::Time last_token_at_ = absl::InfinitePast();

  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool tokens_received_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::pair<grpc::ClientContext*, NodeAssignment>> tracked_ ABSL_GUARDED_BY(mu_);
  std::vector<LostNode> lost_ ABSL_GUARDED_BY(mu_);
  grpc::ClientContext* stream_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool stream_cancelled_for_prefill_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<duet::v1::GenerateResponse> writes_ ABSL_GUARDED_BY(mu_);
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> finish_ ABSL_GUARDED_BY(mu_);  // End() was called
  bool finished_ ABSL_GUARDED_BY(mu_) = false;               // Finish() was called
};

}  // namespace duet::router

#endif  // DUET_ROUTER_GENERATE_CALL_H_
