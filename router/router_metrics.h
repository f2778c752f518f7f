// The router's Prometheus metrics: what a client sees of each request (time to first token,
// inter-token latency, end-to-end, queue, prefill and decode time; tokens; requests finished
// by reason) and the cluster as the router sees it (node liveness and assignments, requests
// running and waiting). Names follow vLLM's (common/metrics/metrics.h).
//
// Thread safety: all methods are thread-safe.
#ifndef DUET_ROUTER_ROUTER_METRICS_H_
#define DUET_ROUTER_ROUTER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/metrics/metrics.h"

namespace duet::router {

class RouterMetrics {
 public:
  explicit RouterMetrics(const metrics::ProcessLabels& labels);

  // The histograms and counters above, for a MetricsServer.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void ObserveTimeToFirstToken(double seconds) { ttft_.Observe(seconds); }
  // `tokens` tokens arrived `seconds` after the previous ones: each counts seconds / tokens.
  void ObserveInterToken(double seconds, int64_t tokens);
  void ObserveQueueTime(double seconds) { queue_.Observe(seconds); }
  void ObservePrefillTime(double seconds) { prefill_.Observe(seconds); }
  // A finished request: end-to-end and decode time (first token to end; < 0 = no token),
  // why it finished ("stop", "length", "stop_string", "cancelled", "error"), and its tokens.
  void Finished(double e2e_seconds, double decode_seconds, const std::string& reason,
                int64_t prompt_tokens, int64_t generation_tokens);
  // A node was given a request (decode, prefill or colocated role).
  void Assigned(const std::string& node_id);
  // A prefill node was chosen, and why (NodeAssignment::reason), under the routing policy.
  void Routed(const std::string& policy, const std::string& reason);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::map<std::string, std::string> labels_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& e2e_;
  prometheus::Histogram& queue_;
  prometheus::Histogram& prefill_;
  prometheus::Histogram& decode_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Counter>& assignments_;
  prometheus::Family<prometheus::Counter>& routing_decisions_;
};

}  // namespace duet::router

#endif  // DUET_ROUTER_ROUTER_METRICS_H_
