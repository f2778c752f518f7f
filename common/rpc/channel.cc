#include "common/rpc/channel.h"

#include <grpc/grpc.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/rpc/address.h"
#include "common/rpc/status_convert.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace duet::rpc {
namespace {

int ToMillisArg(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 0, INT32_MAX));
}

const char* StateName(grpc_connectivity_state state) {
  switch (state) {
    case GRPC_CHANNEL_IDLE:
      return "IDLE";
    case GRPC_CHANNEL_CONNECTING:
      return "CONNECTING";
    case GRPC_CHANNEL_READY:
      return "READY";
    case GRPC_CHANNEL_TRANSIENT_FAILURE:
      return "TRANSIENT_FAILURE";
    case GRPC_CHANNEL_SHUTDOWN:
      return "SHUTDOWN";
  }
  return "UNKNOWN";
}

// True when `target` starts with a URI scheme gRPC resolves ("dns:", "unix:", ...).
bool HasScheme(std::string_view target) {
  for (std::string_view scheme : {"dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:"}) {
    if (target.starts_with(scheme)) return true;
  }
  return false;
}

std::chrono::system_clock::time_point DeadlineAfter(absl::Duration timeout) {
  return absl::ToChronoTime(absl::Now() + std::max(timeout, absl::ZeroDuration()));
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(std::string_view target,
                                                             const ChannelOptions& options) {
  if (!HasScheme(target)) {
    absl::StatusOr<HostPort> host_port = ParseHostPort(target);
    if (!host_port.ok()) return host_port.status();
    if (host_port->port == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot dial '", std::string(target), "': port 0 is not a real port"));
    }
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ToMillisArg(options.keepalive_time));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ToMillisArg(options.keepalive_timeout));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // 0 = keep pinging idle connections
  args.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  args.SetMaxSendMessageSize(options.max_send_message_bytes);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              ToMillisArg(options.initial_reconnect_backoff));
  // Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC core takes it as the minimum *connect timeout*
  // (a connection attempt's deadline, default 20 s), so setting it to the 100 ms backoff made
  // every TCP + HTTP/2 handshake that took longer under load fail ("tcp handshaker shutdown").
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, ToMillisArg(options.max_reconnect_backoff));
  return grpc::CreateCustomChannel(std::string(target), grpc::InsecureChannelCredentials(), args);
}

absl::Status WaitForReady(const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout) {
  if (channel->WaitForConnected(DeadlineAfter(timeout))) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("channel not ready after ",
                                             absl::FormatDuration(timeout), " (state ",
                                             StateName(channel->GetState(false)), ")"));
}

absl::StatusOr<ServingStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                          const std::string& service, absl::Duration timeout) {
  std::unique_ptr<grpc::health::v1::Health::Stub> stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineAfter(timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(
        FromGrpcCode(status.error_code()),
        absl::StrCat("health check of service '", service, "': ", status.error_message()));
  }
  return response.status();
}

}  // namespace duet::rpc
