// Helpers of the tests that drive a cluster of real processes through the public Duet API.
#ifndef DUET_TESTS_CLUSTER_CLUSTER_TEST_UTIL_H_
#define DUET_TESTS_CLUSTER_CLUSTER_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "duet/v1/duet.grpc.pb.h"
#include "tests/nodes/node_test_util.h"
#include "tools/cluster/generate_client.h"

namespace duet::cluster_test {

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
