// The cluster spread over several "hosts": the router, two prefill nodes and two decode nodes,
// each in a network namespace of its own, joined by veth pairs to a bridge in a "switch"
// namespace -- all created by the test and removed after it. A process reaches another only
// through its host's one interface, so nothing can lean on loopback. The test process joins the
// network through one more veth (the operator's machine). Then one decode host's link is cut:
// the router notices the missed heartbeats, fails what was running there and sends new work to
// the other decode host; when the link comes back the node registers again.
//
// Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create namespaces and links; skips with the
// reason where that is not permitted.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/base/status.h"
#include "common/rpc/channel.h"
#include "duet/v1/duet.grpc.pb.h"
#include "duet/v1/internal.grpc.pb.h"
#include "tests/cluster/cluster_test_util.h"
#include "tests/nodes/node_test_util.h"
#include "tools/cluster/generate_client.h"
#include "tools/cluster/launcher.h"

namespace duet::cluster_test {
namespace {

using ::duet::cluster::Cluster;
using ::duet::cluster::ClusterSpec;
using ::duet::cluster::GenerateOptions;
using ::duet::cluster::GenerateResult;
using ::duet::nodes_test::Prompt;
using ::duet::nodes_test::SoloRun;

// Runs a shell command; its output (stdout and stderr), or an error that quotes both.
absl::StatusOr<std::string> Sh(const std::string& command) {
  FILE* pipe = popen(absl::StrCat(command, " 2>&1").c_str(), "r");
  if (pipe == nullptr) return absl::InternalError(absl::StrCat("cannot run `", command, "`"));
  std::string output;
  char buffer[512];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  const int status = pclose(pipe);
  if (status != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("`", command, "` failed (status ", status, "): ", output));
  }
  return output;
}

// Hosts on one switched network: a namespace per host with one interface, eth0, at
// 198.18.N.<i>/24 (the benchmarking range of RFC 2544, never routed on real networks; N is a /24
// no interface of this machine uses), a bridge in a switch namespace, and this process's own
// namespace on .254. Everything is named dt<pid>-..., so a run never touches another's, and the
// leftovers of a killed run (its pid gone) are removed by the next.
class HostNetwork {
 public:
  static absl::StatusOr<std::unique_ptr<HostNetwork>> Create(const std::vector<std::string>& hosts) {
    RemoveLeftovers();
    std::unique_ptr<HostNetwork> net(new HostNetwork());
    net->prefix_ = absl::StrCat("dt", getpid());
    // The first namespace doubles as the permission probe: PERMISSION_DENIED with `ip`'s words
    // (the test skips); any later failure is a real error.
    if (absl::Status s = net->AddNamespace(net->prefix_ + "-sw"); !s.ok()) {
      return absl::PermissionDeniedError(s.message());
    }
    absl::StatusOr<int> subnet = FreeSubnet();
    if (!subnet.ok()) return subnet.status();
    net->subnet_ = absl::StrCat("198.18.", *subnet, ".");
    const std::string sw = net->prefix_ + "-sw";
    std::vector<std::string> commands = {
        absl::StrCat("ip -n ", sw, " link set lo up"),
        absl::StrCat("ip -n ", sw, " link add br0 type bridge"),
        absl::StrCat("ip -n ", sw, " link set br0 up"),
        // This process's side: a veth in our namespace, its peer on the switch.
        absl::StrCat("ip link add ", net->prefix_, "h type veth peer name p0 netns ", sw),
        absl::StrCat("ip -n ", sw, " link set p0 master br0 up"),
        absl::StrCat("ip addr add ", net->subnet_, "254/24 dev ", net->prefix_, "h"),
        absl::StrCat("ip link set ", net->prefix_, "h up"),
    };
    for (size_t i = 0; i < hosts.size(); ++i) {
      const std::string ns = net->Netns(hosts[i]);
      const std::string port = absl::StrCat("p", i + 1);
      net->ports_[hosts[i]] = port;
      net->addresses_[hosts[i]] = absl::StrCat(net->subnet_, i + 1);
      if (absl::Status s = net->AddNamespace(ns); !s.ok()) return s;
      commands.insert(commands.end(),
                      {absl::StrCat("ip -n ", sw, " link add ", port, " type veth peer name eth0 netns ", ns),
                       absl::StrCat("ip -n ", sw, " link set ", port, " master br0 up"),
                       absl::StrCat("ip -n ", ns, " addr add ", net->addresses_[hosts[i]],
                                    "/24 dev eth0"),
                       absl::StrCat("ip -n ", ns, " link set eth0 up"),
                       absl::StrCat("ip -n ", ns, " link set lo up")});
    }
    for (const std::string& command : commands) {
      if (absl::StatusOr<std::string> out = Sh(command); !out.ok()) return out.status();
    }
    return net;
  }

  ~HostNetwork() {
    (void)Sh(absl::StrCat("ip link del ", prefix_, "h"));
    for (const std::string& ns : namespaces_) (void)Sh(absl::StrCat("ip netns del ", ns));
  }

  std::string Netns(const std::string& host) const { return absl::StrCat(prefix_, "-", host); }
  std::string Address(const std::string& host) const { return addresses_.at(host); }
  // Takes the host's switch port down (a pulled cable: no reset reaches anyone) or back up.
  absl::Status SetLink(const std::string& host, bool up) {
    return Sh(absl::StrCat("ip -n ", prefix_, "-sw link set ", ports_.at(host), up ? " up" : " down"))
        .status();
  }

 private:
  HostNetwork() = default;

  absl::Status AddNamespace(const std::string& ns) {
    DUET_RETURN_IF_ERROR(Sh(absl::StrCat("ip netns add ", ns)).status());
    namespaces_.push_back(ns);
    return absl::OkStatus();
  }

  // Whether process `pid` exists and is not a zombie (a killed run can linger as one).
  static bool Running(int pid) {
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    if (!std::getline(stat, line)) return false;
    const size_t paren = line.rfind(')');
    return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z';
  }

  // The namespaces and links of earlier runs whose process is gone.
  static void RemoveLeftovers() {
    absl::StatusOr<std::string> list = Sh("ip netns list");
    if (!list.ok()) return;
    for (absl::string_view line : absl::StrSplit(*list, '\n', absl::SkipEmpty())) {
      const std::string name(line.substr(0, line.find(' ')));
      int pid = 0;
      const size_t dash = name.find('-');
      if (!absl::StartsWith(name, "dt") || dash == std::string::npos ||
          !absl::SimpleAtoi(name.substr(2, dash - 2), &pid) || Running(pid)) {
        continue;
      }
      (void)Sh(absl::StrCat("ip netns del ", name));
      (void)Sh(absl::StrCat("ip link del dt", pid, "h"));
    }
  }

  // A third octet N such that no interface here has an address in 198.18.N.0/24.
  static absl::StatusOr<int> FreeSubnet() {
    DUET_ASSIGN_OR_RETURN(const std::string addresses, Sh("ip -4 -o addr show"));
    for (int i = 0; i < 250; ++i) {
      const int n = 1 + (getpid() + i) % 250;
      if (!absl::StrContains(addresses, absl::StrCat(" 198.18.", n, "."))) return n;
    }
    return absl::ResourceExhaustedError("no free /24 in 198.18.0.0/16");
  }

  std::string prefix_;
  std::string subnet_;
  std::vector<std::string> namespaces_;
  std::map<std::string, std::string> ports_;
  std::map<std::string, std::string> addresses_;
};

// Runs the greedy requests of `prompts` concurrently; each must complete with the tokens of a
// single-process run.
void ExpectAllComplete(v1::Duet::Stub& stub, const std::vector<std::vector<int32_t>>& prompts,
                       int max_tokens) {
  std::vector<v1::GenerateRequest> requests;
  for (const std::vector<int32_t>& prompt : prompts) {
    requests.push_back(TokenRequest(prompt, nodes_test::Greedy(max_tokens)));
  }
  const std::vector<GenerateResult> results = RunConcurrently(stub, requests);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << "request " << i << ": " << results[i].status;
    EXPECT_EQ(results[i].tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, prompts[i],
                                         nodes_test::Greedy(max_tokens)))
        << "request " << i;
  }
}

TEST(MultiHostTest, NodesOnSeparateHostsServeAndACutLinkIsRoutedAround) {
  const std::vector<std::string> hosts = {"router", "prefill-0", "prefill-1", "decode-0",
                                          "decode-1"};
  absl::StatusOr<std::unique_ptr<HostNetwork>> network = HostNetwork::Create(hosts);
  if (absl::IsPermissionDenied(network.status())) {
    GTEST_SKIP() << "cannot create network namespaces here (needs root: CAP_SYS_ADMIN and "
                    "CAP_NET_ADMIN): "
                 << network.status().message();
  }
  ASSERT_TRUE(network.ok()) << network.status();
  HostNetwork& net = **network;

  ClusterSpec spec = CpuSpec(2, 2);
  constexpr absl::Duration kHeartbeatTimeout = absl::Milliseconds(1500);  // CpuSpec's
  spec.decode_args = {"--test-decode-step-delay-ms", "15"};
  spec.placement = [&net](const std::string& name) {
    return ClusterSpec::Placement{net.Netns(name), net.Address(name)};
  };
  absl::StatusOr<std::unique_ptr<Cluster>> started = Cluster::Start(spec);
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& cluster = **started;
  // Every process listens on (and advertised) its own host's address.
  for (const cluster::ClusterProcess& p : cluster.processes()) {
    EXPECT_TRUE(absl::StartsWith(p.address, net.Address(p.name) + ":")) << p.name << " " << p.address;
  }
  auto stub = v1::Duet::NewStub(*rpc::CreateChannel(cluster.router_address()));

  // 1. Requests across hosts: every prefill and decode host takes part (KV crosses the bridge).
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 12; ++i) prompts.push_back(Prompt(5 + 13 * i, 300 + static_cast<uint32_t>(i)));
  ExpectAllComplete(*stub, prompts, 8);
  for (const cluster::ClusterProcess& p : cluster.processes()) {
    if (p.role == "router") continue;
    EXPECT_GT(
        Counter(Status(p.address), p.role == "prefill" ? "kv_chunks_sent" : "kv_chunks_accepted"), 0)
        << p.name;
  }

  // 2. Long streams on both decode hosts, then decode-1's cable is pulled.
  constexpr int kStreams = 6;
  constexpr int kStreamTokens = 400;
  LongStreams streams(*stub, kStreams, kStreamTokens);
  ASSERT_TRUE(streams.AwaitAllStreaming(absl::Seconds(30)));
  const std::string decode1 = cluster.Find("decode-1")->address;
  const std::string decode0 = cluster.Find("decode-0")->address;
  const int64_t accepted_before = Counter(Status(decode0), "kv_chunks_accepted");
  ASSERT_TRUE(net.SetLink("decode-1", false).ok());
  const absl::Time cut = absl::Now();

  // The router notices by missed heartbeats (no connection was reset: the cable is simply gone).
  const std::optional<absl::Duration> detected =
      TimeUntil([&] { return !RouterListsLive(cluster, "decode-1"); }, absl::Seconds(15));
  ASSERT_TRUE(detected.has_value()) << "the router still lists decode-1 as live";
  EXPECT_GE(*detected, kHeartbeatTimeout - absl::Milliseconds(300));
  std::printf("decode-1 declared dead %.2f s after its link was cut\n",
              absl::ToDoubleSeconds(*detected));
  EXPECT_TRUE(RouterListsLive(cluster, "decode-0"));

  // New requests go to decode-0 and complete.
  std::vector<std::vector<int32_t>> fresh;
  for (int i = 0; i < 6; ++i) fresh.push_back(Prompt(10 + 7 * i, 500 + static_cast<uint32_t>(i)));
  ExpectAllComplete(*stub, fresh, 6);
  EXPECT_GT(Counter(Status(decode0), "kv_chunks_accepted"), accepted_before);

  // Streams that were on decode-1 end with UNAVAILABLE soon after the detection, not at their
  // deadline; the others complete.
  streams.Join();
  int unavailable = 0, completed = 0;
  for (int i = 0; i < kStreams; ++i) {
    SCOPED_TRACE(absl::StrCat("stream ", i));
    const GenerateResult& stream = streams.results()[i];
    if (stream.status.ok()) {
      ++completed;
      EXPECT_EQ(stream.tokens.size(), static_cast<size_t>(kStreamTokens));
      continue;
    }
    ++unavailable;
    EXPECT_EQ(stream.status.code(), absl::StatusCode::kUnavailable) << stream.status;
    EXPECT_LT(streams.ended()[i] - cut, *detected + absl::Seconds(5));
  }
  EXPECT_GE(unavailable, 1);
  EXPECT_GE(completed, 1);

  // 3. The cable is back: decode-1 registers again and, once its abandoned streams are
  // cancelled, holds no KV.
  ASSERT_TRUE(net.SetLink("decode-1", true).ok());
  EXPECT_TRUE(
      TimeUntil([&] { return RouterListsLive(cluster, "decode-1"); }, absl::Seconds(15)).has_value())
      << "decode-1 did not come back";
  EXPECT_TRUE(TimeUntil(
      [&] {
        auto admin = v1::NodeAdmin::NewStub(*rpc::CreateChannel(decode1));
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        v1::NodeStatus s;
        return admin->GetStatus(&context, v1::GetStatusRequest(), &s).ok() &&
               s.load().active_requests() == 0 &&
               s.load().free_kv_blocks() == s.load().total_kv_blocks();
      },
      absl::Seconds(30)).has_value())
      << "decode-1 still holds the KV of its abandoned streams";
  const std::vector<cluster::ProcessExit> exits = cluster.Stop();
  for (const cluster::ProcessExit& e : exits) EXPECT_EQ(e.exit_code, 0) << e.Describe();
}

}  // namespace
}  // namespace duet::cluster_test
