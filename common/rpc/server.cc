#include "common/rpc/server.h"

#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/rpc/address.h"

namespace duet::rpc {
namespace {

int ToMillisArg(absl::Duration d) {
  const int64_t ms = absl::ToInt64Milliseconds(d);
  return static_cast<int>(std::clamp<int64_t>(ms, 0, INT32_MAX));
}

// Copies the names of the services a server serves once it has started (the only public hook
// that sees them, including health and reflection).
class ServiceListPlugin : public grpc::ServerBuilderPlugin {
 public:
  explicit ServiceListPlugin(std::vector<std::string>* names) : names_(names) {}
  std::string name() override { return "duet.service_list"; }
  void InitServer(grpc::ServerInitializer* /*si*/) override {}
  void Finish(grpc::ServerInitializer* si) override { *names_ = *si->GetServiceList(); }
  void ChangeArguments(const std::string& /*name*/, void* /*value*/) override {}

 private:
  std::vector<std::string>* names_;
};

class ServiceListOption : public grpc::ServerBuilderOption {
 public:
  explicit ServiceListOption(std::vector<std::string>* names) : names_(names) {}
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->push_back(std::make_unique<ServiceListPlugin>(names_));
  }

 private:
  std::vector<std::string>* names_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RpcServer>> RpcServer::Start(
    const ServerOptions& options, absl::Span<grpc::Service* const> services) {
  absl::StatusOr<HostPort> host_port = ParseHostPort(options.address);
  if (!host_port.ok()) return host_port.status();
  absl::flat_hash_set<grpc::Service*> seen;
  for (size_t i = 0; i < services.size(); ++i) {
    if (services[i] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("RpcServer: services[", i, "] is null"));
    }
    if (!seen.insert(services[i]).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("RpcServer: services[", i, "] is listed twice"));
    }
  }

  // Process-wide switches that gRPC reads when a server is built (and that are not thread-safe).
  static std::once_flag init_once;
  std::call_once(init_once, [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  });

  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(options.address, grpc::InsecureServerCredentials(), &bound_port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.SetMaxSendMessageSize(options.max_send_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, ToMillisArg(options.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ToMillisArg(options.keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             ToMillisArg(options.min_client_ping_interval));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  std::vector<std::string> service_names;
  builder.SetOption(std::make_unique<ServiceListOption>(&service_names));

  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    if (server != nullptr) server->Shutdown();
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on '", options.address,
        "': the port is in use, the host is not an address of this machine, or binding is not "
        "permitted"));
  }
  host_port->port = bound_port;
  std::unique_ptr<RpcServer> result(new RpcServer(
      std::move(server), bound_port, FormatHostPort(*host_port), std::move(service_names)));
  // Named services are unknown to the health service until given a status.
  for (const std::string& name : result->service_names_) result->SetServiceServing(name, true);
  return result;
}

RpcServer::RpcServer(std::unique_ptr<grpc::Server> server, int port, std::string address,
                     std::vector<std::string> service_names)
    : server_(std::move(server)),
      port_(port),
      address_(std::move(address)),
      service_names_(std::move(service_names)) {}

RpcServer::~RpcServer() { Shutdown(absl::ZeroDuration()); }

// The health service is thread-safe and ignores updates once the server has shut it down.
void RpcServer::SetServing(bool serving) {
  server_->GetHealthCheckService()->SetServingStatus(serving);
}

void RpcServer::SetServiceServing(const std::string& service, bool serving) {
  server_->GetHealthCheckService()->SetServingStatus(service, serving);
}

void RpcServer::Shutdown(absl::Duration grace) {
  // Held for the whole shutdown, so a concurrent caller returns only once it is complete. Handlers
  // may still call SetServing*() meanwhile (they take no lock).
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  // Health turns NOT_SERVING inside grpc::Server::Shutdown, before in-flight calls are drained.
  server_->Shutdown(absl::ToChronoTime(absl::Now() + std::max(grace, absl::ZeroDuration())));
  server_->Wait();
}

}  // namespace duet::rpc
