// The node side of duet.v1.NodeControl: registers with the router and sends heartbeats with the
// node's load from a thread of its own.
//
// The thread registers (retrying every heartbeat interval while the router is unreachable),
// then heartbeats every RegisterResponse.heartbeat_interval_ms. A heartbeat answered with
// known = false (the router restarted) registers again at once. SetDraining() sends a heartbeat
// with draining = true at once, and every later one carries it.
//
// Thread safety: all methods are thread-safe.
#ifndef DUET_NODE_NODE_CONTROL_H_
#define DUET_NODE_NODE_CONTROL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "duet/v1/internal.grpc.pb.h"

namespace duet::node {

class NodeControlClient {
 public:
  // `load` is called on the client's thread before every heartbeat; it must be thread-safe.
  // `kv_events` (may be empty: no prefix cache) likewise: it returns the prefix-cache changes
  // since its previous call, or everything cached when asked for a snapshot -- which the client
  // asks for after (re)registering and after a heartbeat failed (its events may be lost).
  // INVALID_ARGUMENT for a malformed router address or a non-positive interval.
  using KvEventsFn = std::function<v1::KvCacheEvents(bool snapshot)>;
  static absl::StatusOr<std::unique_ptr<NodeControlClient>> Start(
      const std::string& router_address, v1::RegisterRequest registration,
      std::function<v1::NodeLoad()> load, absl::Duration heartbeat_interval,
      KvEventsFn kv_events = nullptr);

  // Stops the thread (an RPC in flight is cancelled).
  ~NodeControlClient();
  NodeControlClient(const NodeControlClient&) = delete;
  NodeControlClient& operator=(const NodeControlClient&) = delete;

  void SetDraining();
  // After SetDraining: waits until a heartbeat with draining = true reached the router (it
  // answered), the router turned out unreachable (UNAVAILABLE: nobody to tell), or `timeout`
  // passed. True when it was reported.
  bool AwaitDrainingReported(absl::Duration timeout);
  // Registered and the last heartbeat (if any) was answered with known = true.
  bool registered() const;
  // Heartbeats the router answered since Start.
  int64_t num_heartbeats() const;

 private:
  NodeControlClient(std::unique_ptr<v1::NodeControl::Stub> stub, v1::RegisterRequest registration,
                    std::function<v1::NodeLoad()> load, absl::Duration interval,
                    KvEventsFn kv_events);
  void Loop();
  // One RPC with a deadline of `timeout`; the context is cancellable by the destructor.
  grpc::Status Call(const std::function<grpc::Status(grpc::ClientContext*)>& rpc,
                    absl::Duration timeout);

  const std::unique_ptr<v1::NodeControl::Stub> stub_;
  const v1::RegisterRequest registration_;
  const std::function<v1::NodeLoad()> load_;
  const KvEventsFn kv_events_;
  bool kv_snapshot_needed_ = true;  // client thread only

  mutable absl::Mutex mu_;
  absl::Duration interval_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_reported_ ABSL_GUARDED_BY(mu_) = false;
  bool router_gone_ ABSL_GUARDED_BY(mu_) = false;  // a draining heartbeat found no router
  bool registered_ ABSL_GUARDED_BY(mu_) = false;
  int64_t num_heartbeats_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::ClientContext* in_flight_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::thread thread_;
};

}  // namespace duet::node

#endif  // DUET_NODE_NODE_CONTROL_H_
