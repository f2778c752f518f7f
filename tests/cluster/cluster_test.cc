// The whole cluster as real processes on loopback (tools/cluster/launcher.h: duet-router,
// duet-prefill-node, duet-decode-node on ephemeral ports), driven through the public Duet API
// like a client would: concurrent mixed requests against the single-process engine, client
// cancellation, a decode node killed with SIGKILL, a corrupted KV chunk, bad requests, an
// expired lease, and the Vulkan backend.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/rpc/channel.h"
#include "duet/v1/duet.grpc.pb.h"
#include "duet/v1/internal.grpc.pb.h"
#include "tests/cluster/cluster_test_util.h"
#include "tests/engine/engine_test_util.h"
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
using ::testing::HasSubstr;

constexpr absl::Duration kRequestTimeout = absl::Seconds(120);

std::unique_ptr<Cluster> MustStart(const ClusterSpec& spec) {
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(spec);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? std::move(*cluster) : nullptr;
}

std::unique_ptr<v1::Duet::Stub> ClientStub(const Cluster& cluster) {
  return v1::Duet::NewStub(*rpc::CreateChannel(cluster.router_address()));
}

// Waits until every node holds no request and its whole KV pool is free.
bool AwaitAllIdle(const Cluster& cluster, absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    bool idle = true;
    for (const cluster::ClusterProcess& p : cluster.processes()) {
      if (p.role == "router") continue;
      const v1::NodeStatus s = Status(p.address);
      idle = idle && s.load().active_requests() == 0 &&
             s.load().free_kv_blocks() == s.load().total_kv_blocks();
    }
    if (idle) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
}


// The sampling settings of request i: greedy, sampled with top-k, nucleus + min-p, and greedy
// with repetition penalties, each with its own seed.
v1::SamplingParams MixedSampling(int i) {
  v1::SamplingParams s;
  s.set_max_tokens(1 + (i * 13) % 48);
  s.set_ignore_eos(true);
  s.set_seed(1000 + static_cast<uint64_t>(i));
  switch (i % 4) {
    case 0:
      s.set_temperature(0);
      break;
    case 1:
      s.set_temperature(0.8);
      s.set_top_k(20);
      break;
    case 2:
      s.set_temperature(1.0);
      s.set_top_p(0.9);
      s.set_min_p(0.05);
      break;
    default:
      s.set_temperature(0);
      s.set_repetition_penalty(1.3);
      s.set_presence_penalty(0.5);
      s.set_frequency_penalty(0.25);
      break;
  }
  return s;
}

TEST(ClusterTest, ConcurrentMixedRequestsMatchTheSingleProcessEngine) {
  std::unique_ptr<Cluster> cluster = MustStart(CpuSpec(2, 2));
  ASSERT_NE(cluster, nullptr);
  auto stub = ClientStub(*cluster);
  std::vector<v1::GenerateRequest> requests;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 32; ++i) {
    prompts.push_back(Prompt(1 + (i * 37) % 150, 100 + static_cast<uint32_t>(i)));
    requests.push_back(TokenRequest(prompts.back(), MixedSampling(i)));
  }
  const std::vector<GenerateResult> results = RunConcurrently(*stub, requests);
  for (size_t i = 0; i < results.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    const GenerateResult& r = results[i];
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.finish_reason, v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(r.usage.prompt_tokens(), static_cast<int64_t>(prompts[i].size()));
    EXPECT_EQ(r.usage.completion_tokens(), requests[i].sampling().max_tokens());
    // Every request carries a seed, so sampled ones are reproducible too.
    EXPECT_EQ(r.tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, prompts[i], requests[i].sampling()));
  }
  // Both prefill and both decode nodes took part.
  for (const cluster::ClusterProcess& p : cluster->processes()) {
    if (p.role == "router") continue;
    const v1::NodeStatus s = Status(p.address);
    const int64_t chunks = Counter(s, p.role == "prefill" ? "kv_chunks_sent" : "kv_chunks_accepted");
    EXPECT_GT(chunks, 0) << p.name;
  }
  EXPECT_TRUE(AwaitAllIdle(*cluster));
}

TEST(ClusterTest, CancellingMidStreamFreesKvOnBothNodes) {
  ClusterSpec spec = CpuSpec(1, 1);
  spec.decode_args = {"--test-decode-step-delay-ms", "10"};
  std::unique_ptr<Cluster> cluster = MustStart(spec);
  ASSERT_NE(cluster, nullptr);
  auto stub = ClientStub(*cluster);
  const std::string decode_address = cluster->Find("decode-0")->address;
  v1::SamplingParams sampling = nodes_test::Greedy(400);
  int64_t active_while_streaming = -1, free_while_streaming = -1;
  GenerateOptions options;
  options.timeout = kRequestTimeout;
  int tokens = 0;
  options.on_message = [&](const v1::GenerateResponse& message) {
    tokens += message.token_ids_size();
    if (tokens < 3) return true;
    const v1::NodeStatus s = Status(decode_address);
    active_while_streaming = s.load().active_requests();
    free_while_streaming = s.load().free_kv_blocks();
    return false;  // cancel
  };
  const GenerateResult r =
      cluster::Generate(*stub, TokenRequest(Prompt(100, 5), sampling), options);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kCancelled) << r.status;
  EXPECT_LT(r.tokens.size(), 400u);
  // The request held KV on the decode node while it streamed...
  EXPECT_EQ(active_while_streaming, 1);
  EXPECT_LT(free_while_streaming, 96);
  // ...and nothing anywhere once the cancellation arrived.
  EXPECT_TRUE(AwaitAllIdle(*cluster, absl::Seconds(10)));
}

TEST(ClusterTest, KilledDecodeNodeFailsItsStreamsAndOthersComplete) {
  ClusterSpec spec = CpuSpec(2, 2);
  spec.decode_args = {"--test-decode-step-delay-ms", "15"};
  std::unique_ptr<Cluster> cluster = MustStart(spec);
  ASSERT_NE(cluster, nullptr);
  auto stub = ClientStub(*cluster);

  // Six long streams, spread over both decode nodes.
  constexpr int kStreams = 6;
  LongStreams streams(*stub, kStreams, 450);
  ASSERT_TRUE(streams.AwaitAllStreaming(absl::Seconds(30)));
  ASSERT_TRUE(cluster->Signal("decode-1", SIGKILL).ok());
  const absl::Time killed = absl::Now();

  // New requests right away (the router may not know yet that decode-1 is dead): all complete,
  // retried on decode-0 when they were sent to the dead node.
  std::vector<v1::GenerateRequest> fresh;
  std::vector<std::vector<int32_t>> fresh_prompts;
  for (int i = 0; i < 6; ++i) {
    fresh_prompts.push_back(Prompt(10 + 7 * i, 200 + static_cast<uint32_t>(i)));
    fresh.push_back(TokenRequest(fresh_prompts.back(), nodes_test::Greedy(6)));
  }
  const std::vector<GenerateResult> fresh_results = RunConcurrently(*stub, fresh);
  for (size_t i = 0; i < fresh_results.size(); ++i) {
    ASSERT_TRUE(fresh_results[i].status.ok()) << i << ": " << fresh_results[i].status;
    EXPECT_EQ(fresh_results[i].tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, fresh_prompts[i],
                                               nodes_test::Greedy(6)));
  }
  streams.Join();

  // Streams on decode-1 ended with UNAVAILABLE soon after the kill; the others completed.
  int unavailable = 0, completed = 0;
  for (int i = 0; i < kStreams; ++i) {
    SCOPED_TRACE(absl::StrCat("stream ", i));
    const GenerateResult& stream = streams.results()[i];
    if (stream.status.ok()) {
      ++completed;
      EXPECT_EQ(stream.tokens.size(), 450u);
      continue;
    }
    ++unavailable;
    EXPECT_EQ(stream.status.code(), absl::StatusCode::kUnavailable) << stream.status;
    EXPECT_LT(streams.ended()[i] - killed, absl::Seconds(10));
    EXPECT_FALSE(stream.tokens.empty());
  }
  EXPECT_GE(unavailable, 1);
  EXPECT_GE(completed, 1);

  // The router forgets the dead node.
  EXPECT_TRUE(TimeUntil([&] { return !RouterListsLive(*cluster, "decode-1"); }, absl::Seconds(5))
                  .has_value());
  const std::optional<cluster::ProcessExit> exit =
      cluster->AwaitExit("decode-1", absl::Seconds(5));
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->term_signal, SIGKILL);
}

// The decode node's pool holds 12 blocks; three requests that grow to 8 blocks each cannot all
// finish there at once, so the node preempts some, and the router resumes them (prefill of
// prompt + output so far, then decoding on). Every client still gets exactly the tokens of a
// single-process run.
TEST(ClusterTest, PreemptedRequestsResumeWithUnchangedOutput) {
  ClusterSpec spec = CpuSpec(1, 1);
  spec.node_args = {"--backend", "cpu", "--kv-dtype", "fp8", "--max-num-seqs", "8"};
  spec.prefill_args = {"--kv-blocks", "96"};
  spec.decode_args = {"--kv-blocks", "12"};
  std::unique_ptr<Cluster> cluster = MustStart(spec);
  ASSERT_NE(cluster, nullptr);
  auto stub = ClientStub(*cluster);
  std::vector<v1::GenerateRequest> requests;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 3; ++i) {
    prompts.push_back(Prompt(20, 400 + static_cast<uint32_t>(i)));
    v1::SamplingParams sampling = nodes_test::Greedy(100);
    if (i == 2) {  // a sampled one: resumed sampling continues the same per-token seeds
      sampling.set_temperature(0.9);
      sampling.set_top_k(40);
      sampling.set_frequency_penalty(0.3);
    }
    requests.push_back(TokenRequest(prompts.back(), sampling));
  }
  const std::vector<GenerateResult> results = RunConcurrently(*stub, requests);
  for (size_t i = 0; i < results.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    ASSERT_TRUE(results[i].status.ok()) << results[i].status;
    EXPECT_EQ(results[i].usage.prompt_tokens(), 20);
    EXPECT_EQ(results[i].usage.completion_tokens(), 100);
    EXPECT_EQ(results[i].tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, prompts[i],
                                         requests[i].sampling()));
  }
  EXPECT_GT(Counter(Status(cluster->Find("decode-0")->address), "preemptions"), 0);
  EXPECT_TRUE(AwaitAllIdle(*cluster));
}

TEST(ClusterTest, CorruptedKvChunkIsDetectedAndNeverDecoded) {
  ClusterSpec spec = CpuSpec(1, 1);
  spec.prefill_args = {"--test-corrupt-kv-chunks", "1"};
  std::unique_ptr<Cluster> cluster = MustStart(spec);
  ASSERT_NE(cluster, nullptr);
  auto stub = ClientStub(*cluster);
  const std::vector<int32_t> prompt = Prompt(40, 9);
  const v1::SamplingParams sampling = nodes_test::Greedy(8);
  GenerateOptions options;
  options.timeout = kRequestTimeout;

  // The first transfer carries the corrupted chunk: the decode node rejects it, the request
  // fails (no other prefill node to retry on) without a single token.
  const GenerateResult bad = cluster::Generate(*stub, TokenRequest(prompt, sampling), options);
  EXPECT_FALSE(bad.status.ok());
  EXPECT_TRUE(bad.tokens.empty());
  EXPECT_THAT(std::string(bad.status.message()), HasSubstr("checksum"));
  const v1::NodeStatus decode = Status(cluster->Find("decode-0")->address);
  EXPECT_EQ(Counter(decode, "kv_checksum_errors"), 1);
  EXPECT_EQ(Counter(decode, "kv_transfers_failed"), 1);
  EXPECT_EQ(Counter(Status(cluster->Find("prefill-0")->address), "faults_injected"), 1);
  EXPECT_TRUE(AwaitAllIdle(*cluster));

  // The cluster keeps serving, with the right tokens.
  const GenerateResult good = cluster::Generate(*stub, TokenRequest(prompt, sampling), options);
  ASSERT_TRUE(good.status.ok()) << good.status;
  EXPECT_EQ(good.tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, prompt, sampling));
}

TEST(ClusterTest, BadRequestsGetPreciseErrorsAndTheClusterKeepsServing) {
  std::unique_ptr<Cluster> cluster = MustStart(CpuSpec(1, 1));
  ASSERT_NE(cluster, nullptr);
  auto stub = ClientStub(*cluster);
  struct Case {
    const char* name;
    v1::GenerateRequest request;
    absl::StatusCode code;
    const char* message;
  };
  std::vector<Case> cases;
  auto text = [](const std::string& t) {
    v1::GenerateRequest r;
    r.set_text(t);
    r.mutable_sampling()->set_max_tokens(4);
    return r;
  };
  {
    v1::GenerateRequest r = TokenRequest(Prompt(600, 1), nodes_test::Greedy(4));
    cases.push_back({"prompt longer than the context", r, absl::StatusCode::kInvalidArgument,
                     "context"});
  }
  {
    v1::GenerateRequest r = text("hello");
    r.mutable_sampling()->set_max_tokens(0);
    cases.push_back({"zero max tokens", r, absl::StatusCode::kInvalidArgument, "max_tokens"});
    r.mutable_sampling()->set_max_tokens(-3);
    cases.push_back({"negative max tokens", r, absl::StatusCode::kInvalidArgument, "max_tokens"});
  }
  {
    v1::GenerateRequest r = text("hello");
    r.mutable_sampling()->set_temperature(-1);
    cases.push_back({"negative temperature", r, absl::StatusCode::kInvalidArgument, "temperature"});
    r = text("hello");
    r.mutable_sampling()->set_top_p(1.5);
    cases.push_back({"top_p above 1", r, absl::StatusCode::kInvalidArgument, "top_p"});
  }
  {
    v1::GenerateRequest r = text("hello");
    r.set_model("no-such-model");
    cases.push_back({"unknown model", r, absl::StatusCode::kNotFound, "no-such-model"});
  }
  {
    v1::GenerateRequest r = text("");
    r.set_add_bos(false);
    cases.push_back({"empty prompt without BOS", r, absl::StatusCode::kInvalidArgument, "empty"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const GenerateResult r = cluster::Generate(*stub, c.request);
    EXPECT_EQ(r.status.code(), c.code) << r.status;
    EXPECT_THAT(std::string(r.status.message()), HasSubstr(c.message));
  }
  // Sampled at temperature 1 from a random model: EOS may come early unless ignored.
  v1::GenerateRequest good = text("Once upon a time");
  good.mutable_sampling()->set_ignore_eos(true);
  const GenerateResult ok = cluster::Generate(*stub, good);
  EXPECT_TRUE(ok.status.ok()) << ok.status;
  EXPECT_EQ(ok.tokens.size(), 4u);
  EXPECT_TRUE(AwaitAllIdle(*cluster));
}

TEST(ClusterTest, ReservationWithoutPrefillIsFreedWhenItsLeaseExpires) {
  std::unique_ptr<Cluster> cluster = MustStart(CpuSpec(1, 1));
  ASSERT_NE(cluster, nullptr);
  const std::string decode_address = cluster->Find("decode-0")->address;
  auto decode = v1::DecodeService::NewStub(*rpc::CreateChannel(decode_address));
  v1::ReserveRequest reserve =
      nodes_test::ReserveFor("lease-1", Prompt(64, 3), nodes_test::Greedy(4), /*lease_ms=*/300);
  reserve.set_model_id(nodes_test::kTestModelFileId);
  v1::ReserveResponse reservation;
  const grpc::Status reserved = nodes_test::CallReserve(*decode, reserve, &reservation);
  ASSERT_TRUE(reserved.ok()) << reserved.error_message();
  const v1::NodeStatus held = Status(decode_address);
  EXPECT_EQ(held.load().active_requests(), 1);
  EXPECT_EQ(held.load().free_kv_blocks(), 96 - reservation.num_blocks());
  // The blocks return to the pool once the lease ends (the failed request's outcome stays for a
  // StreamTokens that never comes, without KV, until unclaimed_retention).
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  v1::NodeStatus after = Status(decode_address);
  while (Counter(after, "leases_expired") != 1 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
    after = Status(decode_address);
  }
  EXPECT_EQ(Counter(after, "leases_expired"), 1);
  EXPECT_EQ(after.load().free_kv_blocks(), 96);
}

// One request can be followed across the processes' logs by its id: every process logs its
// lifecycle events as "request=<id> event=<name> ...".
TEST(ClusterTest, RequestLifecycleIsLoggedOnEveryProcess) {
  const std::string dir = ::testing::TempDir() + "/lifecycle-logs-" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  ClusterSpec spec = CpuSpec(1, 1);
  spec.log_level = "info";
  spec.log_dir = dir;
  std::unique_ptr<Cluster> cluster = MustStart(spec);
  ASSERT_NE(cluster, nullptr);
  auto stub = ClientStub(*cluster);
  const GenerateResult r = cluster::Generate(*stub, TokenRequest(Prompt(24, 8), nodes_test::Greedy(5)));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_FALSE(r.request_id.empty());
  cluster->Stop();
  auto read = [&dir](const std::string& name) {
    std::ifstream in(dir + "/" + name + ".log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  const std::string id = "request=" + r.request_id + " event=";
  const std::map<std::string, std::vector<std::string>> expected = {
      {"router", {"received", "assigned", "first_token", "finished"}},
      {"prefill-0", {"prefill_start", "prefill_end", "transfer_end"}},
      {"decode-0", {"reserved", "kv_received", "finished"}},
  };
  for (const auto& [process, events] : expected) {
    const std::string log = read(process);
    for (const std::string& event : events) {
      EXPECT_THAT(log, HasSubstr(id + event)) << process << " log:\n" << log;
    }
  }
  EXPECT_THAT(read("router"), HasSubstr(id + "finished reason=length tokens=5"));
  std::filesystem::remove_all(dir);
}

// A rolling restart of one prefill and one decode node under a steady load: each drains
// (SIGTERM: no new assignments, in-flight work finishes), exits 0 and comes back; no request
// fails and every greedy output is the single-process one.
TEST(ClusterTest, RollingRestartUnderLoadFailsNoRequest) {
  ClusterSpec spec = CpuSpec(2, 2);
  spec.decode_args = {"--test-decode-step-delay-ms", "5"};
  std::unique_ptr<Cluster> cluster = MustStart(spec);
  ASSERT_NE(cluster, nullptr);
  auto stub = ClientStub(*cluster);
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0};
  absl::Mutex mu;
  std::vector<std::string> failures;
  std::vector<std::thread> clients;
  for (int c = 0; c < 3; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; !stop.load(); ++i) {
        const std::vector<int32_t> prompt = Prompt(10 + (i * 7) % 60, 1000 * c + i);
        const v1::SamplingParams sampling = nodes_test::Greedy(12);
        GenerateOptions options;
        options.timeout = absl::Seconds(60);
        const GenerateResult r =
            cluster::Generate(*stub, TokenRequest(prompt, sampling), options);
        ++sent;
        absl::MutexLock lock(&mu);
        if (!r.status.ok()) {
          failures.push_back(r.status.ToString());
        } else if (r.tokens != SoloRun("cpu", kv::CacheDtype::kFp8E4M3, prompt, sampling)) {
          failures.push_back("wrong tokens");
        }
      }
    });
  }
  auto await_sent = [&](int n) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (sent.load() < n && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  };
  await_sent(6);
  for (const char* node : {"prefill-1", "decode-1"}) {
    SCOPED_TRACE(node);
    cluster::ProcessExit exit;
    const absl::Status restarted = cluster->RestartNode(node, absl::Seconds(30), &exit);
    ASSERT_TRUE(restarted.ok()) << restarted;
    EXPECT_EQ(exit.exit_code, 0) << exit.Describe();
    await_sent(sent.load() + 6);  // the restarted node takes work again
  }
  stop = true;
  for (std::thread& t : clients) t.join();
  EXPECT_GE(sent.load(), 18);
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, first: " << failures.front();
  // Both restarted nodes served requests after coming back.
  for (const char* node : {"prefill-1", "decode-1"}) {
    const v1::NodeStatus s = Status(cluster->Find(node)->address);
    EXPECT_GT(Counter(s, std::string(node).rfind("prefill", 0) == 0 ? "kv_chunks_sent"
                                                                     : "kv_chunks_accepted"),
              0)
        << node;
  }
}

// Three system prompts over two prefill nodes, one request at a time: with cache-aware routing
// every request after the first of its prompt lands where that prompt is cached (the router
// learns it from the routing itself and the nodes' KV events); round-robin scatters them. Outputs
// are identical either way.
TEST(ClusterTest, CacheAwareRoutingReusesMorePrefixesThanRoundRobin) {
  std::vector<std::vector<int32_t>> systems;
  for (int p = 0; p < 3; ++p) systems.push_back(Prompt(48, 900 + static_cast<uint32_t>(p)));
  std::map<std::string, int64_t> hits;
  for (const std::string policy : {"round_robin", "cache_aware"}) {
    SCOPED_TRACE(policy);
    ClusterSpec spec = CpuSpec(2, 1);
    spec.overrides.push_back("router.routing_policy=" + policy);
    // A heartbeat that lands during a prefill reports its queued tokens until the next one;
    // weighing cached tokens 2x keeps such a stale report (one short prompt) from outweighing
    // a 48-token prefix, so the outcome does not depend on heartbeat timing under load.
    spec.overrides.push_back("router.cache_overlap_weight=2");
    std::unique_ptr<Cluster> cluster = MustStart(spec);
    ASSERT_NE(cluster, nullptr);
    auto stub = ClientStub(*cluster);
    GenerateOptions options;
    options.timeout = kRequestTimeout;
    for (int i = 0; i < 12; ++i) {
      std::vector<int32_t> prompt = systems[static_cast<size_t>(i % 3)];
      const std::vector<int32_t> question = Prompt(8, 950 + static_cast<uint32_t>(i));
      prompt.insert(prompt.end(), question.begin(), question.end());
      const GenerateResult r =
          cluster::Generate(*stub, TokenRequest(prompt, nodes_test::Greedy(4)), options);
      ASSERT_TRUE(r.status.ok()) << r.status;
      EXPECT_EQ(r.tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, prompt, nodes_test::Greedy(4)));
      hits[policy] += r.usage.cached_prompt_tokens();
    }
    // The router's view of each prefill node's cache converges on the node's own (its KV
    // events): the 3 full blocks of every prompt it prefilled.
    auto control = v1::NodeControl::NewStub(*rpc::CreateChannel(cluster->router_address()));
    int64_t router_total = 0;
    bool agreed = false;
    for (int attempt = 0; attempt < 100 && !agreed; ++attempt) {
      grpc::ClientContext context;
      v1::ListNodesResponse nodes;
      ASSERT_TRUE(control->ListNodes(&context, v1::ListNodesRequest(), &nodes).ok());
      bool agree = true;
      router_total = 0;
      for (const v1::NodeInfo& n : nodes.nodes()) {
        if (n.role() != v1::NODE_ROLE_PREFILL) continue;
        router_total += n.num_cached_blocks();
        agree = agree && n.num_cached_blocks() ==
                             Counter(Status(cluster->Find(n.node_id())->address),
                                     "prefix_cache_blocks");
      }
      agreed = agree;
      if (!agreed) absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_TRUE(agreed);
    EXPECT_GE(router_total, 3 * 3);
  }
  // Round-robin: request i (prompt i mod 3) meets its prompt on node i mod 2 only from i = 6.
  EXPECT_EQ(hits["round_robin"], 6 * 48);
  // Cache-aware: every request after each prompt's first.
  EXPECT_EQ(hits["cache_aware"], 9 * 48);
}

TEST(ClusterTest, VulkanNodesMatchTheSingleProcessVulkanEngine) {
  if (!testing::HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  ClusterSpec spec = CpuSpec(1, 1);
  spec.node_args = {"--backend", "vulkan", "--kv-dtype", "fp8", "--kv-blocks", "64",
                    "--max-num-seqs", "4"};
  spec.ready_timeout = absl::Seconds(300);
  std::unique_ptr<Cluster> cluster = MustStart(spec);
  ASSERT_NE(cluster, nullptr);
  auto stub = ClientStub(*cluster);
  std::vector<v1::GenerateRequest> requests;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; ++i) {
    prompts.push_back(Prompt(5 + 31 * i, 300 + static_cast<uint32_t>(i)));
    requests.push_back(TokenRequest(prompts.back(), nodes_test::Greedy(6 + i)));
  }
  const std::vector<GenerateResult> results = RunConcurrently(*stub, requests);
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].status;
    EXPECT_EQ(results[i].tokens,
              SoloRun("vulkan", kv::CacheDtype::kFp8E4M3, prompts[i], requests[i].sampling()))
        << i;
  }
}

// Speculative decoding through the cluster: with each proposer on the decode node (drafting
// every step, adaptivity off), concurrent greedy requests that ask for speculation get exactly
// the tokens of a plain single-process run, as do requests that opt out; the node reports
// drafted and accepted tokens, and every KV block returns to the pool (rollback leaks none).
TEST(ClusterTest, SpeculativeDecodingKeepsGreedyOutputs) {
  for (const std::string method : {"ngram", "self"}) {
    SCOPED_TRACE(method);
    ClusterSpec spec = CpuSpec(1, 1);
    spec.decode_args = {"--speculation", method, "--speculation-adaptive", "off",
                        "--num-speculative-tokens", "4"};
    std::unique_ptr<Cluster> cluster = MustStart(spec);
    ASSERT_NE(cluster, nullptr);
    auto stub = ClientStub(*cluster);
    std::vector<v1::GenerateRequest> requests;
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 4; ++i) {
      // A repeated phrase, so prompt lookup finds matches.
      std::vector<int32_t> prompt;
      const std::vector<int32_t> phrase = Prompt(6, 700 + static_cast<uint32_t>(i));
      for (int r = 0; r < 3; ++r) prompt.insert(prompt.end(), phrase.begin(), phrase.end());
      prompts.push_back(prompt);
      requests.push_back(TokenRequest(prompt, nodes_test::Greedy(24)));
      requests.back().set_speculation(i == 3 ? v1::SPECULATION_OFF : v1::SPECULATION_ON);
    }
    const std::vector<GenerateResult> results = RunConcurrently(*stub, requests);
    for (size_t i = 0; i < results.size(); ++i) {
      ASSERT_TRUE(results[i].status.ok()) << results[i].status;
      EXPECT_EQ(results[i].tokens, SoloRun("cpu", kv::CacheDtype::kFp8E4M3, prompts[i],
                                           nodes_test::Greedy(24)))
          << "request " << i;
    }
    const cluster::ClusterProcess* decode = nullptr;
    for (const cluster::ClusterProcess& p : cluster->processes()) {
      if (p.role == "decode") decode = &p;
    }
    ASSERT_NE(decode, nullptr);
    const v1::NodeStatus status = Status(decode->address);
    EXPECT_GT(Counter(status, "spec_decode_num_draft_tokens"), 0);
    EXPECT_GE(Counter(status, "spec_decode_num_accepted_tokens"), 0);
    EXPECT_LE(Counter(status, "spec_decode_num_accepted_tokens"),
              Counter(status, "spec_decode_num_draft_tokens"));
    EXPECT_TRUE(AwaitAllIdle(*cluster));
  }
}

}  // namespace
}  // namespace duet::cluster_test
