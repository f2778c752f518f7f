// Prometheus metrics of every Duet process (prometheus-cpp), named like vLLM's where vLLM has
// one, with the prefix "duet:" and the constant labels node, role and model.
//
//   MetricsServer: the /metrics HTTP endpoint on --metrics-port (0 = any free port).
//   CallbackCollector: metrics computed at scrape time from a function (gauges and counters a
//     process already keeps, e.g. a node's load and event counts): nothing on the hot path.
//   The vLLM histogram buckets, so dashboards built for vLLM read Duet's histograms the same.
//
// Thread safety: prometheus-cpp metrics are thread-safe; so are the classes here.
#ifndef DUET_COMMON_METRICS_METRICS_H_
#define DUET_COMMON_METRICS_METRICS_H_

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace duet::metrics {

// The labels every series of a process carries.
struct ProcessLabels {
  std::string node;   // node id, or "router"
  std::string role;   // "router", "prefill", "decode", "colocated"
  std::string model;  // model id
  std::map<std::string, std::string> ToMap() const;
};

// vLLM's buckets (vllm/v1/metrics/loggers.py).
const std::vector<double>& TtftBuckets();             // time to first token, seconds
const std::vector<double>& InterTokenBuckets();       // inter-token latency, seconds
const std::vector<double>& RequestLatencyBuckets();   // e2e, queue, prefill, decode, seconds
const std::vector<double>& TransferLatencyBuckets();  // KV transfer, seconds
const std::vector<double>& BatchTokenBuckets();       // tokens per prefill batch
const std::vector<double>& BatchSizeBuckets();        // sequences per decode step

// Serves the registries' metrics at http://host:port/metrics.
class MetricsServer {
 public:
  // port 0 = any free port. UNAVAILABLE naming the address when it cannot listen.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host, int port);

  void Register(const std::weak_ptr<prometheus::Collectable>& collectable);
  // The port it listens on.
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

// Registers a histogram family `name` in `registry` and returns its series with `labels`.
prometheus::Histogram& AddHistogram(prometheus::Registry& registry, const std::string& name,
                                   const std::string& help,
                                   const std::map<std::string, std::string>& labels,
                                   const std::vector<double>& buckets);

// The histograms a node observes on its own hot paths (null members: not this node's role).
struct NodeHistograms {
  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Histogram* kv_transfer_latency = nullptr;  // prefill: first chunk sent to ack
  prometheus::Histogram* prefill_batch_tokens = nullptr;  // prefill: tokens per step
  prometheus::Histogram* decode_batch_size = nullptr;     // decode: sequences per step
  static std::shared_ptr<NodeHistograms> Create(const ProcessLabels& labels);
};

// One sample of a metric computed at scrape time.
struct Sample {
  std::string name;  // e.g. "duet:kv_cache_usage_perc"
  std::string help;
  prometheus::MetricType type = prometheus::MetricType::Gauge;  // Gauge or Counter
  double value = 0;
  std::map<std::string, std::string> labels;  // on top of the process labels
};

// A Collectable whose samples come from a function called at every scrape.
class CallbackCollector final : public prometheus::Collectable {
 public:
  CallbackCollector(ProcessLabels labels, std::function<std::vector<Sample>()> collect);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const ProcessLabels labels_;
  const std::function<std::vector<Sample>()> collect_;
};

}  // namespace duet::metrics

#endif  // DUET_COMMON_METRICS_METRICS_H_
