// What the router's RPC handlers share: the served model, the settings, the node registry,
// channels to the nodes, admission control, the requests in flight, and request ids.
//
// Thread safety: all methods are thread-safe.
#ifndef DUET_ROUTER_ROUTER_STATE_H_
#define DUET_ROUTER_ROUTER_STATE_H_

#include <grpcpp/channel.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/base/clock.h"
#include "router/node_registry.h"
#include "router/router_metrics.h"
#include "router/router_options.h"
#include "router/served_model.h"

namespace duet::router {

// A request in flight, told when a node it may be using is lost.
class InflightCall {
 public:
  virtual ~InflightCall() = default;
  // Called with the router's in-flight lock held: must not block or call back into the
  // RouterState.
  virtual void OnNodeLost(const LostNode& node) = 0;
};

class RouterState {
 public:
  // REQUIRES: model and clock outlive this.
  RouterState(const ServedModel* model, RouterOptions options, const Clock* clock);

  const ServedModel& model() const { return *model_; }
  const RouterOptions& options() const { return options_; }
  const Clock& clock() const { return *clock_; }
  NodeRegistry& registry() { return registry_; }
  const NodeRegistry& registry() const { return registry_; }
  // Prometheus metrics; null = none. REQUIRES: set before serving, outlives the state.
  void set_metrics(RouterMetrics* metrics) { metrics_ = metrics; }
  RouterMetrics* metrics() const { return metrics_; }

  // A channel to `address`, created on first use and shared afterwards. INVALID_ARGUMENT for a
  // malformed address.
  absl::StatusOr<std::shared_ptr<grpc::Channel>> Channel(const std::string& address);

  // Admission: a request may start when fewer than max_queued_requests are admitted and still
  // waiting for their first token; else RESOURCE_EXHAUSTED with a retry-after hint.
  // Each successful TryAdmit() is matched by exactly one LeaveQueue().
  absl::Status TryAdmit();
  void LeaveQueue();
  int32_t num_queued() const;
  // Generate calls in flight (queued or streaming).
  int64_t num_inflight() const;

  // Requests in flight; they are told about lost nodes until removed.
  void AddInflight(InflightCall* call);
  void RemoveInflight(InflightCall* call);
  // Tells every request in flight that `node` is gone (and drops its channel).
  void NodeLost(const LostNode& node);
  // Removes silent nodes from the registry and fails the requests on them.
  void SweepNodes();

  // Worker threads (one per Generate call): counted so shutdown can wait for them.
  void WorkerStarted();
  void WorkerExited();
  // Blocks until no worker is running.
  void WaitForWorkers();

  // "r-" + 16 hex digits, unique in this process and, with high probability, across restarts.
  std::string NextRequestId();
  // A random seed for a request that sets none.
  uint64_t FreshSeed();

 private:
  const ServedModel* const model_;
  const RouterOptions options_;
  const Clock* const clock_;
  NodeRegistry registry_;

  absl::Mutex channels_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<grpc::Channel>> channels_
      ABSL_GUARDED_BY(channels_mu_);

  mutable absl::Mutex queue_mu_;
  int32_t num_queued_ ABSL_GUARDED_BY(queue_mu_) = 0;

  mutable absl::Mutex inflight_mu_;
  absl::flat_hash_set<InflightCall*> inflight_ ABSL_GUARDED_BY(inflight_mu_);

  absl::Mutex workers_mu_;
  int64_t num_workers_ ABSL_GUARDED_BY(workers_mu_) = 0;

  absl::Mutex random_mu_;
  std::mt19937_64 random_ ABSL_GUARDED_BY(random_mu_);
  const uint32_t id_prefix_;
  std::atomic<uint32_t> next_id_{0};
  RouterMetrics* metrics_ = nullptr;
};

}  // namespace duet::router

#endif  // DUET_ROUTER_ROUTER_STATE_H_
