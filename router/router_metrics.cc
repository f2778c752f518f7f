#include "router/router_metrics.h"

#include <prometheus/family.h>

namespace duet::router {
namespace {

prometheus::Counter& MakeCounter(prometheus::Registry& registry, const std::string& name,
                                 const std::string& help,
                                 const std::map<std::string, std::string>& labels) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add(labels);
}

}  // namespace

RouterMetrics::RouterMetrics(const metrics::ProcessLabels& labels)
    : registry_(std::make_shared<prometheus::Registry>()),
      labels_(labels.ToMap()),
      ttft_(metrics::AddHistogram(*registry_, "duet:time_to_first_token_seconds",
                          "Time from the request's arrival to its first token.", labels_,
                          metrics::TtftBuckets())),
      itl_(metrics::AddHistogram(*registry_, "duet:inter_token_latency_seconds",
                         "Time between consecutive output tokens of a request.", labels_,
                         metrics::InterTokenBuckets())),
      e2e_(metrics::AddHistogram(*registry_, "duet:e2e_request_latency_seconds",
                         "Time from the request's arrival to its last token.", labels_,
                         metrics::RequestLatencyBuckets())),
      queue_(metrics::AddHistogram(*registry_, "duet:request_queue_time_seconds",
                           "Time from arrival until a decode node reserved the request's KV.",
                           labels_, metrics::RequestLatencyBuckets())),
      prefill_(metrics::AddHistogram(*registry_, "duet:request_prefill_time_seconds",
                             "Prefill time as the prefill node measured it.", labels_,
                             metrics::RequestLatencyBuckets())),
      decode_(metrics::AddHistogram(*registry_, "duet:request_decode_time_seconds",
                            "Time from the first token to the last.", labels_,
                            metrics::RequestLatencyBuckets())),
      prompt_tokens_(MakeCounter(*registry_, "duet:prompt_tokens_total",
                                 "Prompt tokens of finished requests.", labels_)),
      generation_tokens_(MakeCounter(*registry_, "duet:generation_tokens_total",
                                     "Tokens generated for finished requests.", labels_)),
      finished_(prometheus::BuildCounter()
                    .Name("duet:request_success_total")
                    .Help("Requests finished, by finished_reason.")
                    .Register(*registry_)),
      assignments_(prometheus::BuildCounter()
                       .Name("duet:node_assignments_total")
                       .Help("Requests (attempts) assigned to each node.")
                       .Register(*registry_)),
      routing_decisions_(prometheus::BuildCounter()
                             .Name("duet:router_routing_decisions_total")
                             .Help("Prefill node choices by routing policy and reason.")
                             .Register(*registry_)) {}

void RouterMetrics::ObserveInterToken(double seconds, int64_t tokens) {
  if (tokens <= 0) return;
  const double each = seconds / static_cast<double>(tokens);
  for (int64_t i = 0; i < tokens; ++i) itl_.Observe(each);
}

void RouterMetrics::Finished(double e2e_seconds, double decode_seconds, const std::string& reason,
                             int64_t prompt_tokens, int64_t generation_tokens) {
  e2e_.Observe(e2e_seconds);
  if (decode_seconds >= 0) decode_.Observe(decode_seconds);
  std::map<std::string, std::string> labels = labels_;
  labels["finished_reason"] = reason;
  finished_.Add(labels).Increment();
  prompt_tokens_.Increment(static_cast<double>(prompt_tokens));
  generation_tokens_.Increment(static_cast<double>(generation_tokens));
}

void RouterMetrics::Routed(const std::string& policy, const std::string& reason) {
  std::map<std::string, std::string> labels = labels_;
  labels["policy"] = policy;
  labels["reason"] = reason;
  routing_decisions_.Add(labels).Increment();
}

void RouterMetrics::Assigned(const std::string& node_id) {
  std::map<std::string, std::string> labels = labels_;
  labels["target_node"] = node_id;
  assignments_.Add(labels).Increment();
}

}  // namespace duet::router
