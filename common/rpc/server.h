// A gRPC server with what every Duet process serves besides its own services:
//   - grpc.health.v1.Health (gRPC's built-in implementation): the server as a whole ("") and
//     every registered service start SERVING; SetServing()/SetServiceServing() change that (e.g.
//     NOT_SERVING while draining). Shutdown turns everything NOT_SERVING.
//   - server reflection (grpc.reflection.v1alpha), so grpcurl and `duet` can list and call RPCs.
//   - keepalive settings matching common/rpc/channel.h's clients, and SO_REUSEPORT off so a port
//     that is taken is an error instead of a silently shared socket.
//
// Example:
//   DecodeServiceImpl decode(...);
//   DUET_ASSIGN_OR_RETURN(auto server, RpcServer::Start({.address = "0.0.0.0:0"}, {&decode}));
//   ... register with the router at server->port() ...
//   server->SetServing(false);                // drain: load balancers stop sending
//   server->Shutdown(absl::Seconds(10));      // in-flight calls get 10 s, then are cancelled
//
// Thread safety: all methods are thread-safe.
#ifndef DUET_COMMON_RPC_SERVER_H_
#define DUET_COMMON_RPC_SERVER_H_

#include <grpcpp/server.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace duet::rpc {

struct ServerOptions {
  // "host:port" to listen on: "127.0.0.1:0", "0.0.0.0:50051", "[::]:0". Port 0 = any free port
  // (RpcServer::port() reports it).
  std::string address = "127.0.0.1:0";
  // Largest message received / sent, bytes (KV chunks are large); -1 = unlimited.
  int max_receive_message_bytes = 64 << 20;
  int max_send_message_bytes = 64 << 20;
  // Server-initiated keepalive pings on idle connections: detect dead clients of long streams.
  absl::Duration keepalive_time = absl::Seconds(30);
  absl::Duration keepalive_timeout = absl::Seconds(10);
  // Client pings closer together than this count as abuse (gRPC answers with GOAWAY). Must be
  // <= ChannelOptions::keepalive_time of every client.
  absl::Duration min_client_ping_interval = absl::Seconds(5);
};

class RpcServer {
 public:
  // Builds and starts a server that serves `services` plus health and reflection.
  // `services`: not owned, non-null, distinct; each must outlive the server. Sync and callback
  // services (async services need completion queues, which this class does not create).
  // Errors: INVALID_ARGUMENT (malformed address, null or repeated service), UNAVAILABLE (the
  // address cannot be bound: in use, not local, or permission denied).
  static absl::StatusOr<std::unique_ptr<RpcServer>> Start(
      const ServerOptions& options, absl::Span<grpc::Service* const> services);

  // Shuts down with a zero grace period if Shutdown() was not called.
  ~RpcServer();

  RpcServer(const RpcServer&) = delete;
  RpcServer& operator=(const RpcServer&) = delete;

  // The bound TCP port (> 0).
  int port() const { return port_; }
  // The listen host with the bound port, e.g. "127.0.0.1:43121". Dialable when the host is a
  // specific address; for a wildcard ("0.0.0.0", "[::]") dial a real address of the machine.
  const std::string& address() const { return address_; }
  // Fully qualified names of every service served, including "grpc.health.v1.Health" and
  // "grpc.reflection.v1alpha.ServerReflection".
  const std::vector<std::string>& service_names() const { return service_names_; }

  // Sets the health status of the server as a whole ("") and of every service. No effect after
  // Shutdown().
  void SetServing(bool serving);
  // Sets one service's health status ("" = the server as a whole). A name that is not served
  // becomes known to the health service with that status. No effect after Shutdown().
  void SetServiceServing(const std::string& service, bool serving);

  // Stops accepting calls, turns health NOT_SERVING, lets in-flight calls run for up to `grace`,
  // then cancels the rest, and returns once every handler has returned. Callback handlers must
  // finish their reactors when cancelled (OnCancel) or Shutdown waits for them. Idempotent.
  void Shutdown(absl::Duration grace);

  // The underlying server (for what this class does not wrap). Valid until destruction.
  grpc::Server* grpc_server() { return server_.get(); }

 private:
  RpcServer(std::unique_ptr<grpc::Server> server, int port, std::string address,
            std::vector<std::string> service_names);

  std::unique_ptr<grpc::Server> server_;
  const int port_;
  const std::string address_;
  const std::vector<std::string> service_names_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace duet::rpc

#endif  // DUET_COMMON_RPC_SERVER_H_
