#include "common/metrics/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"

namespace duet::metrics {

std::map<std::string, std::string> ProcessLabels::ToMap() const {
  return {{"node", node}, {"role", role}, {"model", model}};
}

const std::vector<double>& TtftBuckets() {
  static const std::vector<double> b = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                        0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                        20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
  return b;
}

const std::vector<double>& InterTokenBuckets() {
  static const std::vector<double> b = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                        0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                        7.5,  10.0,  20.0, 40.0,  80.0};
  return b;
}

const std::vector<double>& RequestLatencyBuckets() {
  static const std::vector<double> b = {0.3,  0.5,  0.8,  1.0,   1.5,   2.0,   2.5,
                                        5.0,  10.0, 15.0, 20.0,  30.0,  40.0,  50.0,
                                        60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
  return b;
}

const std::vector<double>& TransferLatencyBuckets() {
  static const std::vector<double> b = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
  return b;
}

const std::vector<double>& BatchTokenBuckets() {
  static const std::vector<double> b = {1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
  return b;
}

const std::vector<double>& BatchSizeBuckets() {
  static const std::vector<double> b = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  return b;
}

prometheus::Histogram& AddHistogram(prometheus::Registry& registry, const std::string& name,
                                   const std::string& help,
                                   const std::map<std::string, std::string>& labels,
                                   const std::vector<double>& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add(
      labels, prometheus::Histogram::BucketBoundaries(buckets));
}

std::shared_ptr<NodeHistograms> NodeHistograms::Create(const ProcessLabels& labels) {
  auto h = std::make_shared<NodeHistograms>();
  h->registry = std::make_shared<prometheus::Registry>();
  const std::map<std::string, std::string> l = labels.ToMap();
  auto histogram = [&](const char* name, const char* help, const std::vector<double>& buckets) {
    return &AddHistogram(*h->registry, name, help, l, buckets);
  };
  h->kv_transfer_latency =
      histogram("duet:kv_transfer_latency_seconds",
                "KV transfer time, first chunk sent to the decode node's acknowledgement.",
                TransferLatencyBuckets());
  h->prefill_batch_tokens = histogram("duet:prefill_batch_tokens",
                                      "Prompt tokens computed per prefill step.",
                                      BatchTokenBuckets());
  h->decode_batch_size =
      histogram("duet:decode_batch_size", "Sequences per decode step.", BatchSizeBuckets());
  return h;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host,
                                                                    int port) {
  const std::string address = absl::StrCat(host, ":", port);
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address));
  }
  server->port_ = ports.front();
  return server;
}

void MetricsServer::Register(const std::weak_ptr<prometheus::Collectable>& collectable) {
  exposer_->RegisterCollectable(collectable);
}

CallbackCollector::CallbackCollector(ProcessLabels labels,
                                     std::function<std::vector<Sample>()> collect)
    : labels_(std::move(labels)), collect_(std::move(collect)) {}

std::vector<prometheus::MetricFamily> CallbackCollector::Collect() const {
  std::vector<prometheus::MetricFamily> families;
  std::map<std::string, size_t> index;
  for (const Sample& s : collect_()) {
    auto [it, added] = index.emplace(s.name, families.size());
    if (added) {
      prometheus::MetricFamily family;
      family.name = s.name;
      family.help = s.help;
      family.type = s.type;
      families.push_back(std::move(family));
    }
    prometheus::ClientMetric metric;
    std::map<std::string, std::string> labels = labels_.ToMap();
    for (const auto& [k, v] : s.labels) labels[k] = v;
    for (const auto& [k, v] : labels) metric.label.push_back({k, v});
    if (s.type == prometheus::MetricType::Counter) {
      metric.counter.value = s.value;
    } else {
      metric.gauge.value = s.value;
    }
    families[it->second].metric.push_back(std::move(metric));
  }
  return families;
}

}  // namespace duet::metrics
