#include "router/router_options.h"

#include "absl/strings/str_cat.h"

namespace duet::router {

absl::StatusOr<RouterOptions> RouterOptionsFromConfig(const duet::v1::ClusterConfig& config) {
  const duet::v1::RouterConfig& router = config.router();
  if (config.lease_ms() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_ms must be > 0, got ", config.lease_ms()));
  }
  if (config.heartbeat_interval_ms() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("heartbeat_interval_ms must be > 0, got ", config.heartbeat_interval_ms()));
  }
  if (config.heartbeat_timeout_ms() <= config.heartbeat_interval_ms()) {
    return absl::InvalidArgumentError(
        absl::StrCat("heartbeat_timeout_ms (", config.heartbeat_timeout_ms(),
                     ") must be > heartbeat_interval_ms (", config.heartbeat_interval_ms(), ")"));
  }
  if (router.max_queued_requests() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("router.max_queued_requests must be >= 1, got ",
                                                   router.max_queued_requests()));
  }
  if (router.max_queue_wait_ms() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "router.max_queue_wait_ms must be >= 0 (0 = fail at once), got ", router.max_queue_wait_ms()));
  }
  if (router.request_deadline_ms() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "router.request_deadline_ms must be >= 0 (0 = none), got ", router.request_deadline_ms()));
  }
  if (router.default_max_tokens() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("router.default_max_tokens must be >= 1, got ", router.default_max_tokens()));
  }
  RouterOptions options;
  if (router.routing_policy() == "cache_aware") {
    options.routing_policy = RoutingPolicy::kCacheAware;
  } else if (router.routing_policy() == "least_load") {
    options.routing_policy = RoutingPolicy::kLeastLoad;
  } else if (router.routing_policy() == "round_robin") {
    options.routing_policy = RoutingPolicy::kRoundRobin;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("router.routing_policy '", router.routing_policy(),
                     "' is not one of: cache_aware, least_load, round_robin"));
  }
  if (!(router.cache_overlap_weight() > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("router.cache_overlap_weight must be > 0, got ",
                                                   router.cache_overlap_weight()));
  }
  options.cache_overlap_weight = router.cache_overlap_weight();
  options.lease = absl::Milliseconds(config.lease_ms());
  options.heartbeat_interval = absl::Milliseconds(config.heartbeat_interval_ms());
  options.heartbeat_timeout = absl::Milliseconds(config.heartbeat_timeout_ms());
  options.max_queued_requests = router.max_queued_requests();
  options.max_queue_wait = absl::Milliseconds(router.max_queue_wait_ms());
  options.default_deadline = absl::Milliseconds(router.request_deadline_ms());
  options.default_max_tokens = router.default_max_tokens();
  options.speculation_default_on = config.speculation_default_on();
  // Sweep often enough that a dead node is noticed soon after its timeout.
  options.sweep_interval = std::min(absl::Milliseconds(250), options.heartbeat_interval / 2);
  return options;
}

}  // namespace duet::router
