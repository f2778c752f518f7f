// Client side: channels to Duet processes and the standard health check.
//
// Timeouts are relative durations rather than absl::Time deadlines on purpose: gRPC deadlines are
// wall-clock, while duet::Clock times are monotonic, and mixing the two fails silently.
//
// Thread safety: all functions are thread-safe; a grpc::Channel may be shared by any number of
// threads and stubs.
#ifndef DUET_COMMON_RPC_CHANNEL_H_
#define DUET_COMMON_RPC_CHANNEL_H_

#include <grpcpp/channel.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.pb.h"

namespace duet::rpc {

struct ChannelOptions {
  // Keepalive pings on the connection, also when no call is active, so a dead peer (a node that
  // crashed mid-transfer) is noticed within keepalive_time + keepalive_timeout. keepalive_time
  // must be >= the server's ServerOptions::min_client_ping_interval.
  absl::Duration keepalive_time = absl::Seconds(10);
  absl::Duration keepalive_timeout = absl::Seconds(5);
  // Largest message received / sent, bytes; -1 = unlimited.
  int max_receive_message_bytes = 64 << 20;
  int max_send_message_bytes = 64 << 20;
  // Reconnect backoff after a failed connection attempt: starts at initial, grows to max. Short,
  // because peers in a cluster restart quickly and heartbeats catch the ones that don't.
  absl::Duration initial_reconnect_backoff = absl::Milliseconds(100);
  absl::Duration max_reconnect_backoff = absl::Seconds(5);
};

// An insecure (plaintext) channel to `target`: "host:port" ("[v6]:port" for IPv6), or a gRPC URI
// with a scheme ("dns:///host:port", "unix:/path", "ipv4:1.2.3.4:5"), passed through unchecked.
// Connects lazily. INVALID_ARGUMENT naming the target when a plain host:port is malformed or
// has port 0.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(std::string_view target,
                                                             const ChannelOptions& options = {});

// Connects `channel` and waits until it is READY. UNAVAILABLE naming the last connectivity state
// when it is not ready within `timeout`. REQUIRES: channel != nullptr.
absl::Status WaitForReady(const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout);

using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

// grpc.health.v1.Health/Check for `service` ("" = the server as a whole): SERVING or
// NOT_SERVING. Errors keep the call's code: NOT_FOUND when the server does not know the service,
// UNAVAILABLE when it cannot be reached, DEADLINE_EXCEEDED after `timeout`; the message names
// the service. Fails fast (does not wait for the channel to connect).
absl::StatusOr<ServingStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                          const std::string& service, absl::Duration timeout);

}  // namespace duet::rpc

#endif  // DUET_COMMON_RPC_CHANNEL_H_
