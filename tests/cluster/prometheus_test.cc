// A real Prometheus (Debian's `prometheus` server) scraping a running local cluster: the test
// starts the cluster with metrics, writes a scrape config naming every process, starts
// Prometheus on loopback, sends a short load, and asks Prometheus' HTTP API for the TTFT
// histogram count and for the KV usage of every node.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/rpc/channel.h"
#include "tests/base/child_process.h"
#include "tests/cluster/http_get.h"
#include "tests/cluster/cluster_test_util.h"
#include "tests/nodes/node_test_util.h"
#include "tools/cluster/generate_client.h"
#include "tools/cluster/launcher.h"

namespace duet::cluster_test {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr char kPrometheus[] = "/usr/bin/prometheus";

// A free TCP port on 127.0.0.1 (bound and released; Prometheus takes it right after).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// Polls `query` until the response contains every string of `want` (or 60 s pass).
std::string AwaitQuery(int port, const std::string& query, const std::vector<std::string>& want) {
  std::string body;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    body = HttpGet("127.0.0.1", port, absl::StrCat("/api/v1/query?query=", query));
    bool all = !body.empty();
    for (const std::string& w : want) all = all && body.find(w) != std::string::npos;
    if (all) return body;
    absl::SleepFor(absl::Milliseconds(250));
  }
  return body;
}

TEST(PrometheusTest, ScrapesTtftAndKvUsageOfEveryNode) {
  if (access(kPrometheus, X_OK) != 0) {
    GTEST_FAIL() << kPrometheus << " is missing: run scripts/install-deps.sh (package prometheus)";
  }
  cluster::ClusterSpec spec = CpuSpec(1, 2, /*kv_blocks=*/64);
  spec.metrics = true;
  absl::StatusOr<std::unique_ptr<cluster::Cluster>> cluster = cluster::Cluster::Start(spec);
  ASSERT_TRUE(cluster.ok()) << cluster.status();

  const fs::path dir = fs::path(::testing::TempDir()) / absl::StrCat("prometheus-", getpid());
  fs::create_directories(dir);
  std::string targets;
  for (const cluster::ClusterProcess& p : (*cluster)->processes()) {
    absl::StrAppend(&targets, targets.empty() ? "" : ", ", "'", p.metrics_address, "'");
  }
  {
    std::ofstream config(dir / "prometheus.yml");
    config << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
           << "scrape_configs:\n  - job_name: duet\n    static_configs:\n"
           << "      - targets: [" << targets << "]\n";
  }
  const int port = FreePort();
  testing::Process prometheus(
      {kPrometheus, absl::StrCat("--config.file=", (dir / "prometheus.yml").string()),
       absl::StrCat("--storage.tsdb.path=", (dir / "data").string()),
       absl::StrCat("--web.listen-address=127.0.0.1:", port), "--log.level=warn"},
      (dir / "prometheus.log").string());
  std::string ready;
  for (int i = 0; i < 240 && ready.find("Ready") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(250));
    ready = HttpGet("127.0.0.1", port, "/-/ready");
  }
  ASSERT_THAT(ready, HasSubstr("Ready"));

  // A short load: 6 requests.
  auto stub = v1::Duet::NewStub(*rpc::CreateChannel((*cluster)->router_address()));
  for (int i = 0; i < 6; ++i) {
    v1::GenerateRequest request;
    for (int32_t id : nodes_test::Prompt(30, static_cast<uint32_t>(i))) {
      request.mutable_token_ids()->add_ids(id);
    }
    *request.mutable_sampling() = nodes_test::Greedy(8);
    ASSERT_TRUE(cluster::Generate(*stub, request).status.ok());
  }

  // The TTFT histogram's count, as Prometheus scraped it from the router.
  const std::string ttft =
      AwaitQuery(port, "duet:time_to_first_token_seconds_count", {"\"value\":[", "\"6\"]"});
  EXPECT_THAT(ttft, HasSubstr("\"status\":\"success\""));
  EXPECT_THAT(ttft, HasSubstr("\"node\":\"router\""));
  EXPECT_THAT(ttft, HasSubstr("\"6\"]"));
  // KV usage of every node.
  const std::string usage = AwaitQuery(
      port, "duet:kv_cache_usage_perc",
      {"\"node\":\"prefill-0\"", "\"node\":\"decode-0\"", "\"node\":\"decode-1\""});
  for (const char* node : {"prefill-0", "decode-0", "decode-1"}) {
    EXPECT_THAT(usage, HasSubstr(absl::StrCat("\"node\":\"", node, "\""))) << usage;
  }
  // A histogram quantile works over the scraped buckets.
  const std::string p99 = AwaitQuery(
      port,
      "histogram_quantile(0.99,sum%20by%20(le)(duet:time_to_first_token_seconds_bucket))",
      {"\"value\":["});
  EXPECT_THAT(p99, HasSubstr("\"status\":\"success\""));

  // Prometheus' own exit status is not under test (it may still be compacting when stopped).
  prometheus.Signal(SIGTERM);
  prometheus.Wait();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace duet::cluster_test
