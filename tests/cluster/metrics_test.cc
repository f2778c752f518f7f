// Prometheus metrics of a running cluster, scraped over HTTP like Prometheus would: the
// router's request histograms and counters and every node's KV and transfer series, with the
// node/role/model labels. Also MetricsServer alone (port 0, bad port).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/metrics/metrics.h"
#include "common/rpc/channel.h"
#include "tests/cluster/http_get.h"
#include "tests/cluster/cluster_test_util.h"
#include "tests/nodes/node_test_util.h"
#include "tools/cluster/generate_client.h"
#include "tools/cluster/launcher.h"

namespace duet::cluster_test {
namespace {

using ::testing::HasSubstr;

// The value of the series `name{...labels containing every `must` fragment...}`; -1 if absent.
double Value(const std::string& text, const std::string& name,
             const std::vector<std::string>& must = {}) {
  size_t pos = 0;
  while ((pos = text.find(name + "{", pos)) != std::string::npos) {
    if (pos > 0 && text[pos - 1] != '\n') {
      ++pos;
      continue;
    }
    const size_t end = text.find('\n', pos);
    const std::string line = text.substr(pos, end - pos);
    bool all = true;
    for (const std::string& m : must) all = all && line.find(m) != std::string::npos;
    if (all) return std::strtod(line.substr(line.rfind(' ') + 1).c_str(), nullptr);
    pos = end;
  }
  return -1;
}

TEST(MetricsTest, ClusterSeriesAfterLoad) {
  cluster::ClusterSpec spec = CpuSpec(1, 1, /*kv_blocks=*/64);
  spec.metrics = true;
  absl::StatusOr<std::unique_ptr<cluster::Cluster>> cluster = cluster::Cluster::Start(spec);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto stub = v1::Duet::NewStub(*rpc::CreateChannel((*cluster)->router_address()));
  constexpr int kRequests = 5;
  for (int i = 0; i < kRequests; ++i) {
    v1::GenerateRequest request;
    for (int32_t id : nodes_test::Prompt(20 + i, static_cast<uint32_t>(i))) {
      request.mutable_token_ids()->add_ids(id);
    }
    *request.mutable_sampling() = nodes_test::Greedy(6);
    ASSERT_TRUE(cluster::Generate(*stub, request).status.ok());
  }
  v1::GenerateRequest bad;
  bad.set_text("x");
  bad.mutable_sampling()->set_max_tokens(0);
  EXPECT_FALSE(cluster::Generate(*stub, bad).status.ok());  // rejected before it is admitted

  const std::string router = Scrape((*cluster)->Find("router")->metrics_address);
  ASSERT_FALSE(router.empty());
  const std::string labels = "model=\"tiny-nodes\",node=\"router\",role=\"router\"";
  EXPECT_THAT(router, HasSubstr("duet:time_to_first_token_seconds_bucket{"));
  EXPECT_EQ(Value(router, "duet:time_to_first_token_seconds_count", {labels}), kRequests);
  EXPECT_EQ(Value(router, "duet:inter_token_latency_seconds_count", {labels}), kRequests * 5);
  EXPECT_EQ(Value(router, "duet:e2e_request_latency_seconds_count", {labels}), kRequests);
  EXPECT_EQ(Value(router, "duet:request_success_total", {"finished_reason=\"length\""}),
            kRequests);
  EXPECT_EQ(Value(router, "duet:generation_tokens_total", {labels}), kRequests * 6);
  EXPECT_EQ(Value(router, "duet:prompt_tokens_total", {labels}), 20 + 21 + 22 + 23 + 24);
  EXPECT_EQ(Value(router, "duet:node_up", {"target_node=\"decode-0\""}), 1);
  EXPECT_EQ(Value(router, "duet:node_assignments_total", {"target_node=\"prefill-0\""}),
            kRequests);

  const std::string decode = Scrape((*cluster)->Find("decode-0")->metrics_address);
  ASSERT_FALSE(decode.empty());
  const std::string decode_labels = "model=\"tiny-nodes\",node=\"decode-0\",role=\"decode\"";
  EXPECT_EQ(Value(decode, "duet:kv_cache_blocks_total", {decode_labels}), 64);
  EXPECT_EQ(Value(decode, "duet:kv_cache_blocks_used", {decode_labels}), 0);
  EXPECT_EQ(Value(decode, "duet:kv_cache_usage_perc", {decode_labels}), 0);
  EXPECT_GE(Value(decode, "duet:kv_transfer_chunks_total", {decode_labels}), kRequests);
  EXPECT_EQ(Value(decode, "duet:kv_checksum_errors_total", {decode_labels}), 0);
  // Decode steps: one per output token after the first, batched (5 requests x 5 steps).
  EXPECT_GE(Value(decode, "duet:decode_batch_size_count", {decode_labels}), 5);
  EXPECT_LE(Value(decode, "duet:decode_batch_size_count", {decode_labels}), kRequests * 5);
  EXPECT_EQ(Value(decode, "duet:decode_batch_size_sum", {decode_labels}), kRequests * 5);
  const std::string prefill = Scrape((*cluster)->Find("prefill-0")->metrics_address);
  EXPECT_GT(Value(prefill, "duet:kv_transfer_bytes_total", {"role=\"prefill\""}), 0);
  EXPECT_EQ(Value(prefill, "duet:kv_transfer_latency_seconds_count", {"role=\"prefill\""}),
            kRequests);
  EXPECT_EQ(Value(prefill, "duet:prefill_batch_tokens_sum", {"role=\"prefill\""}),
            20 + 21 + 22 + 23 + 24);
  // Prefix cache: every prompt token was looked up (the prompts share nothing), and the router
  // says why it chose the prefill node.
  EXPECT_EQ(Value(prefill, "duet:prefix_cache_queries_total", {"role=\"prefill\""}),
            20 + 21 + 22 + 23 + 24);
  EXPECT_EQ(Value(prefill, "duet:prefix_cache_hits_total", {"role=\"prefill\""}), 0);
  EXPECT_EQ(Value(prefill, "duet:prefix_cache_hit_rate", {"role=\"prefill\""}), 0);
  EXPECT_GT(Value(prefill, "duet:prefix_cache_blocks", {"role=\"prefill\""}), 0);
  EXPECT_EQ(Value(router, "duet:router_routing_decisions_total",
                  {"policy=\"cache_aware\"", "reason=\"no_prefix_match\""}),
            kRequests);

  // Every series the Grafana dashboard (deploy/) queries is one the cluster exports.
  std::ifstream in(std::string(DUET_SOURCE_DIR) + "/deploy/grafana/duet-dashboard.json");
  std::stringstream dashboard;
  dashboard << in.rdbuf();
  const std::string exported = router + decode + prefill;
  const std::regex metric("duet:[a-z0-9_]+");
  int checked = 0;
  const std::string text = dashboard.str();
  for (auto it = std::sregex_iterator(text.begin(), text.end(), metric);
       it != std::sregex_iterator(); ++it) {
    std::string name = it->str();
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (absl::EndsWith(name, suffix)) name.resize(name.size() - std::string(suffix).size());
    }
    EXPECT_THAT(exported, HasSubstr("# TYPE " + name + " ")) << "the dashboard queries " << name;
    ++checked;
  }
  EXPECT_GT(checked, 20);
}

// A decode node that speculates exports the speculative-decoding series, consistent with each
// other: the acceptance rate is accepted / drafted, the mean accepted length 1 + accepted per
// draft, and a later draft position is never accepted more often than an earlier one.
TEST(MetricsTest, SpeculativeDecodingSeries) {
  cluster::ClusterSpec spec = CpuSpec(1, 1, /*kv_blocks=*/64);
  spec.metrics = true;
  spec.decode_args = {"--speculation", "self", "--speculation-adaptive", "off"};
  absl::StatusOr<std::unique_ptr<cluster::Cluster>> cluster = cluster::Cluster::Start(spec);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto stub = v1::Duet::NewStub(*rpc::CreateChannel((*cluster)->router_address()));
  for (int i = 0; i < 3; ++i) {
    v1::GenerateRequest request;
    for (int32_t id : nodes_test::Prompt(12, static_cast<uint32_t>(40 + i))) {
      request.mutable_token_ids()->add_ids(id);
    }
    *request.mutable_sampling() = nodes_test::Greedy(16);
    request.set_speculation(v1::SPECULATION_ON);
    ASSERT_TRUE(cluster::Generate(*stub, request).status.ok());
  }
  const std::string decode = Scrape((*cluster)->Find("decode-0")->metrics_address);
  const std::string role = "role=\"decode\"";
  const double drafts = Value(decode, "duet:spec_decode_num_drafts_total", {role});
  const double drafted = Value(decode, "duet:spec_decode_num_draft_tokens_total", {role});
  const double accepted = Value(decode, "duet:spec_decode_num_accepted_tokens_total", {role});
  EXPECT_GT(drafts, 0);
  EXPECT_GE(drafted, drafts);
  EXPECT_GE(accepted, 0);
  EXPECT_LE(accepted, drafted);
  EXPECT_DOUBLE_EQ(Value(decode, "duet:spec_decode_acceptance_rate", {role}), accepted / drafted);
  EXPECT_DOUBLE_EQ(Value(decode, "duet:spec_decode_mean_accepted_length", {role}),
                   1 + accepted / drafts);
  double per_position_total = 0;
  double previous = drafts;
  for (int p = 0; p < 4; ++p) {
    const double at = Value(decode, "duet:spec_decode_num_accepted_tokens_per_pos_total",
                            {role, absl::StrCat("position=\"", p, "\"")});
    ASSERT_GE(at, 0) << "position " << p;
    EXPECT_LE(at, previous) << "position " << p;
    previous = at;
    per_position_total += at;
  }
  EXPECT_EQ(per_position_total, accepted);
}

TEST(MetricsTest, ServerOnAnyPortAndBadPort) {
  absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> server =
      metrics::MetricsServer::Start("127.0.0.1", 0);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);
  auto collector = std::make_shared<metrics::CallbackCollector>(
      metrics::ProcessLabels{"n1", "decode", "m"}, [] {
        return std::vector<metrics::Sample>{
            {"duet:test_gauge", "A test gauge.", prometheus::MetricType::Gauge, 2.5, {}},
            {"duet:test_total", "A test counter.", prometheus::MetricType::Counter, 7,
             {{"kind", "a"}}}};
      });
  (*server)->Register(collector);
  const std::string text = Scrape(absl::StrCat("127.0.0.1:", (*server)->port()));
  EXPECT_EQ(Value(text, "duet:test_gauge", {"node=\"n1\"", "role=\"decode\"", "model=\"m\""}),
            2.5);
  EXPECT_EQ(Value(text, "duet:test_total", {"kind=\"a\""}), 7);
  EXPECT_THAT(text, HasSubstr("# TYPE duet:test_total counter"));

  // The same port twice: the second cannot listen.
  absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> again =
      metrics::MetricsServer::Start("127.0.0.1", (*server)->port());
  EXPECT_FALSE(again.ok());
}

}  // namespace
}  // namespace duet::cluster_test
