// The router's settings, from duet.v1.ClusterConfig (config.proto documents each field).
#ifndef DUET_ROUTER_ROUTER_OPTIONS_H_
#define DUET_ROUTER_ROUTER_OPTIONS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc/channel.h"
#include "router/node_registry.h"
#include "duet/v1/config.pb.h"

namespace duet::router {

struct RouterOptions {
  // ReserveRequest.lease_ms. > 0.
  absl::Duration lease = absl::Seconds(10);
  // RegisterResponse.heartbeat_interval_ms; also the retry-after hint (accounting is corrected
  // at each heartbeat). > 0.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A node silent this long is dead. > heartbeat_interval.
  absl::Duration heartbeat_timeout = absl::Seconds(5);
  // Requests admitted and still waiting for their first token; beyond it RESOURCE_EXHAUSTED.
  // >= 1.
  int32_t max_queued_requests = 256;
  // How long an admitted request waits for KV capacity while the cluster is full before
  // RESOURCE_EXHAUSTED; zero = fail at once.
  absl::Duration max_queue_wait = absl::Seconds(30);
  // Deadline of a request whose client sets none; zero = none.
  absl::Duration default_deadline = absl::Seconds(600);
  // SamplingParams.max_tokens when unset. >= 1.
  int32_t default_max_tokens = 256;
  // What SPECULATION_DEFAULT resolves to.
  bool speculation_default_on = false;
  // Deadline of a Release call (sent also after the request's own deadline has passed).
  absl::Duration release_timeout = absl::Seconds(2);
  // How often a background thread removes silent nodes; zero = never (tests call SweepNodes).
  absl::Duration sweep_interval = absl::Milliseconds(250);
  // Prefill node choice (NodeRegistry::Options).
  RoutingPolicy routing_policy = RoutingPolicy::kCacheAware;
  double cache_overlap_weight = 1.0;
  // Channels to the nodes.
  rpc::ChannelOptions channel_options;
};

// Reads the router's fields of `config` (lease_ms, heartbeat_*_ms, router.*,
// speculation_default_on). INVALID_ARGUMENT naming the field when a value is out of range
// (e.g. "heartbeat_timeout_ms (500) must be > heartbeat_interval_ms (1000)").
absl::StatusOr<RouterOptions> RouterOptionsFromConfig(const duet::v1::ClusterConfig& config);

}  // namespace duet::router

#endif  // DUET_ROUTER_ROUTER_OPTIONS_H_
