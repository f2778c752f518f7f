// Helpers of the tests that drive a cluster of real processes through the public Duet API.
#ifndef DUET_TESTS_CLUSTER_CLUSTER_TEST_UTIL_H_
#define DUET_TESTS_CLUSTER_CLUSTER_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/rpc/channel.h"
#include "duet/v1/duet.grpc.pb.h"
#include "duet/v1/internal.grpc.pb.h"
#include "tests/nodes/node_test_util.h"
#include "tools/cluster/generate_client.h"
#include "tools/cluster/launcher.h"

namespace duet::cluster_test {

// A cluster on the CPU backend with FP8 KV (the wire default), `kv_blocks` per node, fast
// heartbeats (100 ms; a node silent for 1.5 s is dead).
inline cluster::ClusterSpec CpuSpec(int num_prefill, int num_decode, int kv_blocks = 96) {
  cluster::ClusterSpec spec;
  spec.model_path = nodes_test::TestModelFile();
  spec.num_prefill = num_prefill;
  spec.num_decode = num_decode;
  spec.overrides = {"heartbeat_interval_ms=100", "heartbeat_timeout_ms=1500"};
  spec.node_args = {"--backend", "cpu", "--kv-dtype", "fp8", "--kv-blocks",
                    std::to_string(kv_blocks), "--max-num-seqs", "16"};
  spec.log_level = "error";
  spec.ready_timeout = absl::Seconds(60);
  return spec;
}

// NodeAdmin.GetStatus of one node process (a test failure when it does not answer).
inline v1::NodeStatus Status(const std::string& address) {
  auto stub = v1::NodeAdmin::NewStub(*rpc::CreateChannel(address));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::NodeStatus status;
  const grpc::Status s = stub->GetStatus(&context, v1::GetStatusRequest(), &status);
  EXPECT_TRUE(s.ok()) << address << ": " << s.error_message();
  return status;
}

// A NodeStatus counter; -1 when absent.
inline int64_t Counter(const v1::NodeStatus& status, const std::string& name) {
  auto it = status.counters().find(name);
  return it == status.counters().end() ? -1 : it->second;
}

// Whether the router lists `node` as live (false when it does not list it, or cannot answer).
inline bool RouterListsLive(const cluster::Cluster& cluster, const std::string& node) {
  auto control = v1::NodeControl::NewStub(*rpc::CreateChannel(cluster.router_address()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::ListNodesResponse nodes;
  if (!control->ListNodes(&context, v1::ListNodesRequest(), &nodes).ok()) return false;
  for (const v1::NodeInfo& n : nodes.nodes()) {
    if (n.node_id() == node) return n.live();
  }
  return false;
}

// Polls `condition` every 50 ms for at most `timeout`; the time it took, or nullopt.
template <typename F>
std::optional<absl::Duration> TimeUntil(F condition, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  while (!condition()) {
    if (absl::Now() - start > timeout) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::Now() - start;
}

inline v1::GenerateRequest TokenRequest(const std::vector<int32_t>& prompt,
                                        const v1::SamplingParams& sampling) {
  v1::GenerateRequest request;
  for (int32_t id : prompt) request.mutable_token_ids()->add_ids(id);
  *request.mutable_sampling() = sampling;
  return request;
}

// Runs `requests` concurrently, each with a 120 s timeout.
inline std::vector<cluster::GenerateResult> RunConcurrently(
    v1::Duet::Stub& stub, const std::vector<v1::GenerateRequest>& requests) {
  std::vector<cluster::GenerateResult> results(requests.size());
  std::vector<std::thread> threads;
  cluster::GenerateOptions options;
  options.timeout = absl::Seconds(120);
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = cluster::Generate(stub, requests[i], options); });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

// `count` long greedy streams of `max_tokens` tokens each (request i: a prompt of 20 + i tokens,
// seed 50 + i), each on a thread of its own, started by the constructor.
class LongStreams {
 public:
  LongStreams(v1::Duet::Stub& stub, int count, int max_tokens)
      : results_(static_cast<size_t>(count)), ended_(static_cast<size_t>(count)) {
    for (int i = 0; i < count; ++i) {
      threads_.emplace_back([this, &stub, i, max_tokens] {
        cluster::GenerateOptions options;
        options.timeout = absl::Seconds(60);
        bool counted = false;
        options.on_message = [&](const v1::GenerateResponse& m) {
          if (!counted && m.token_ids_size() > 0) {
            counted = true;
            absl::MutexLock lock(&mu_);
            ++streaming_;
          }
          return true;
        };
        const cluster::GenerateResult result = cluster::Generate(
            stub,
            TokenRequest(nodes_test::Prompt(20 + i, 50 + static_cast<uint32_t>(i)),
                         nodes_test::Greedy(max_tokens)),
            options);
        absl::MutexLock lock(&mu_);
        results_[static_cast<size_t>(i)] = result;
        ended_[static_cast<size_t>(i)] = absl::Now();
      });
    }
  }
  ~LongStreams() { Join(); }

  // Whether every stream had its first token within `timeout`.
  bool AwaitAllStreaming(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(this, &LongStreams::AllStarted), timeout);
  }

  void Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  // After Join: each stream's result and when it ended.
  const std::vector<cluster::GenerateResult>& results() const { return results_; }
  const std::vector<absl::Time>& ended() const { return ended_; }

 private:
  bool AllStarted() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return streaming_ == static_cast<int>(results_.size());
  }

  absl::Mutex mu_;
  int streaming_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<cluster::GenerateResult> results_;
  std::vector<absl::Time> ended_;
  std::vector<std::thread> threads_;
};

}  // namespace duet::cluster_test

#endif  // DUET_TESTS_CLUSTER_CLUSTER_TEST_UTIL_H_
