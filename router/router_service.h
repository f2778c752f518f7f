// The router's gRPC services: duet.v1.Duet for clients (Generate, Tokenize, ListModels) and
// duet.v1.NodeControl for nodes (Register, Heartbeat), over one RouterState. Serve them with
// common/rpc/server.h (which adds health and reflection):
//
//   Router router(model.get(), options);
//   DUET_ASSIGN_OR_RETURN(auto server, rpc::RpcServer::Start({.address = ...}, router.services()));
//   ...
//   router.StopSweeper();             // draining: do not declare nodes dead meanwhile
//   server->Shutdown(absl::Seconds(10));
//   router.WaitForIdle();
//
// All handlers use gRPC's callback API: unary ones answer inline (no blocking), Generate runs a
// GenerateCall (a reactor and a worker thread).
//
// Thread safety: all methods are thread-safe.
#ifndef DUET_ROUTER_ROUTER_SERVICE_H_
#define DUET_ROUTER_ROUTER_SERVICE_H_

#include <grpcpp/impl/service_type.h>

#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/base/clock.h"
#include "duet/v1/duet.pb.h"
#include "duet/v1/internal.pb.h"
#include "router/router_options.h"
#include "router/router_state.h"
#include "router/served_model.h"

namespace duet::router {

class Router {
 public:
  // Starts the background sweeper when options.sweep_interval > 0. REQUIRES: model and clock
  // outlive the router.
  Router(const ServedModel* model, RouterOptions options, const Clock* clock = Clock::Real());
  // Stops the sweeper and waits for workers. REQUIRES: the server serving services() was shut
  // down first.
  ~Router();

  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // duet.v1.Duet and duet.v1.NodeControl; owned by the router.
  std::vector<grpc::Service*> services();

  RouterState& state() { return state_; }

  // Removes nodes silent past the heartbeat timeout and fails the requests on them (what the
  // sweeper does every sweep_interval; tests with a FakeClock call it directly).
  void SweepNodes() { state_.SweepNodes(); }
  // Stops the background sweeper. Idempotent.
  void StopSweeper();
  // Blocks until every Generate worker has exited.
  void WaitForIdle() { state_.WaitForWorkers(); }

  // The handlers' logic, without gRPC (also for tests).
  absl::Status Tokenize(const duet::v1::TokenizeRequest& request,
                        duet::v1::TokenizeResponse* response) const;
  void ListModels(duet::v1::ListModelsResponse* response) const;
  absl::Status Register(const duet::v1::RegisterRequest& request,
                        duet::v1::RegisterResponse* response);
  void Heartbeat(const duet::v1::HeartbeatRequest& request, duet::v1::HeartbeatResponse* response);
  void ListNodes(duet::v1::ListNodesResponse* response) const;

 private:
  class DuetServiceImpl;
  class NodeControlImpl;

  void SweepLoop();

  RouterState state_;
  std::unique_ptr<DuetServiceImpl> duet_service_;
  std::unique_ptr<NodeControlImpl> node_control_;

  absl::Mutex sweeper_mu_;
  bool stop_sweeper_ ABSL_GUARDED_BY(sweeper_mu_) = false;
  std::thread sweeper_;
};

}  // namespace duet::router

#endif  // DUET_ROUTER_ROUTER_SERVICE_H_
