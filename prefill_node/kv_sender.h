// Streams one request's KV chunks to its decode node (DecodeService.PushKv, client streaming)
// from a thread of its own, so the prefill worker hands chunks over and computes on while they
// travel (transfer overlaps the next layers' compute).
//
// The thread opens the call at construction, writes queued chunks in order, and after the chunk
// with `last` half-closes and waits for the decode node's PushKvResponse. If a write fails (the
// decode node rejected a chunk or is gone), it collects the call's status at once. Abort()
// sends a chunk with abort_reason when no write is in flight and cancels the call in any case.
// on_done runs exactly once, on the sender's thread, as the thread's last action.
//
// Status of a failed transfer: "KV transfer to decode node ADDR failed: <code>: <message>",
// with code UNAVAILABLE when the decode node could not be reached or went away (UNAVAILABLE,
// DEADLINE_EXCEEDED or CANCELLED from the transport) and ABORTED when it rejected the transfer
// (any other code: NOT_FOUND for an expired reservation, DATA_LOSS, ...); CANCELLED after
// Abort().
//
// Thread safety: all methods are thread-safe. The destructor cancels a call still running and
// joins the thread (or detaches it when called from on_done itself).
#ifndef DUET_PREFILL_NODE_KV_SENDER_H_
#define DUET_PREFILL_NODE_KV_SENDER_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/kv/kv_transfer.h"
#include "duet/v1/internal.grpc.pb.h"

namespace duet::prefill {

// A KvChunk carrying `payload` under `header` (common/kv/kv_transfer.h), with its checksum,
// format version and element type set.
v1::KvChunk MakeKvChunk(const kv::KvChunkHeader& header, std::vector<uint8_t> payload,
                        v1::KvDtype kv_dtype);

class KvSender {
 public:
  struct Result {
    absl::Status status;  // OK: the decode node acknowledged the whole transfer
    v1::PushKvResponse response;
    absl::Time first_write;  // wall time the first chunk was handed to gRPC (InfinitePast: none)
    absl::Time done;         // wall time the call ended
    int64_t payload_bytes = 0;
  };

  // REQUIRES: channel non-null. `request_id` / `reservation_id` label the abort chunk.
  KvSender(std::shared_ptr<grpc::Channel> channel, std::string decode_address,
           std::string request_id, std::string reservation_id, std::function<void(Result)> on_done);
  ~KvSender();
  KvSender(const KvSender&) = delete;
  KvSender& operator=(const KvSender&) = delete;

  // Queues a chunk (sent in queue order). Ignored after a chunk with `last`, after Abort, or
  // once the call failed.
  void Send(v1::KvChunk chunk);
  // Stops the transfer: an abort chunk if possible, then the call is cancelled. Idempotent.
  void Abort(const std::string& reason);
  // The call failed or was aborted: no chunk queued from now on will arrive.
  bool failed() const { return failed_.load(); }

 private:
  void Loop();
  absl::Status Describe(const grpc::Status& status) const;

  const std::unique_ptr<v1::DecodeService::Stub> stub_;
  const std::string decode_address_;
  const std::string request_id_;
  const std::string reservation_id_;
  std::function<void(Result)> on_done_;
  std::atomic<bool> failed_{false};

  absl::Mutex mu_;
  std::deque<v1::KvChunk> queue_ ABSL_GUARDED_BY(mu_);
  bool last_queued_ ABSL_GUARDED_BY(mu_) = false;
  bool abort_ ABSL_GUARDED_BY(mu_) = false;
  std::string abort_reason_ ABSL_GUARDED_BY(mu_);
  // The thread is writing or finishing the call (not waiting for chunks): Abort cancels the call
  // at once instead of leaving it to the thread.
  bool busy_ ABSL_GUARDED_BY(mu_) = true;
  grpc::ClientContext context_;  // TryCancel is thread-safe
  std::thread thread_;
};

}  // namespace duet::prefill

#endif  // DUET_PREFILL_NODE_KV_SENDER_H_
