// Shared pieces of the node tests: a small synthetic model, in-process prefill and decode nodes
// on port 0 (each with its own engine, as separate processes would have), clients for their
// streams, and the single-process reference runs the nodes must reproduce.
#ifndef DUET_TESTS_NODES_NODE_TEST_UTIL_H_
#define DUET_TESTS_NODES_NODE_TEST_UTIL_H_

#include <grpcpp/client_context.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/engine/engine.h"
#include "common/model/gguf.h"
#include "common/model/tokenizer.h"
#include "common/rpc/server.h"
#include "decode_node/decode_node.h"
#include "duet/v1/internal.grpc.pb.h"
#include "node/completion.h"
#include "prefill_node/prefill_node.h"

namespace duet::nodes_test {

// Generous bound for waits on node state (they normally take milliseconds).
inline constexpr absl::Duration kWait = absl::Seconds(20);

// The tiny synthetic llama (64 hidden, 4/2 heads of 16, context 512, 260-token vocab) with 4
// layers, so prefill reports several layer groups; Q8_0 weights. Built once per process.
std::shared_ptr<const GgufFile> TestModel();
const Tokenizer& TestTokenizer();
// TestModel() written to a GGUF file in a temp directory of this process (once): the same
// bytes, for node processes. Returns its path.
std::string TestModelFile();
// TestModel()'s id as nodes and the router derive it from that file name.
inline constexpr char kTestModelFileId[] = "tiny-nodes";

// An engine for `backend` ("cpu" or "vulkan") over TestModel().
std::unique_ptr<Engine> NewEngine(const std::string& backend, kv::CacheDtype dtype,
                                  int64_t num_blocks, int64_t max_sequences);

// The reference: one process, one engine, Prefill then one DecodeStep per token, sampling with
// node::Completion (the nodes' sampler and stop rules). Returns every completion token.
std::vector<int32_t> SoloRun(const std::string& backend, kv::CacheDtype dtype,
                             const std::vector<int32_t>& prompt,
                             const v1::SamplingParams& sampling);

// temperature 0, max_tokens, ignore_eos, seed 7.
v1::SamplingParams Greedy(int32_t max_tokens);
// Deterministic prompt ids in [3, vocab) from `seed`.
std::vector<int32_t> Prompt(int64_t n, uint32_t seed);

// A node served in-process on 127.0.0.1:0. Destruction shuts the server down (cancelling
// calls), then stops the node.
struct DecodeHarness {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<decode::DecodeNode> node;
  std::unique_ptr<rpc::RpcServer> server;
  std::unique_ptr<v1::DecodeService::Stub> stub;
  std::string address;
  int64_t total_blocks = 0;
  int64_t max_seqs = 0;
  ~DecodeHarness();
};
struct DecodeSetup {
  std::string backend = "cpu";
  kv::CacheDtype dtype = kv::CacheDtype::kFp8E4M3;
  int64_t num_blocks = 64;
  decode::DecodeNodeOptions options;  // model_id "test-model" unless set
};
std::unique_ptr<DecodeHarness> StartDecode(DecodeSetup setup);

struct PrefillHarness {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<prefill::PrefillNode> node;
  std::unique_ptr<rpc::RpcServer> server;
  std::unique_ptr<v1::PrefillService::Stub> stub;
  std::string address;
  int64_t total_blocks = 0;
  ~PrefillHarness();
};
struct PrefillSetup {
  std::string backend = "cpu";
  kv::CacheDtype dtype = kv::CacheDtype::kFp8E4M3;
  int64_t num_blocks = 64;
  prefill::PrefillNodeOptions options;
};
std::unique_ptr<PrefillHarness> StartPrefill(PrefillSetup setup);

// Everything a token stream (StreamTokens or Run) delivered.
struct StreamResult {
  std::vector<int32_t> tokens;
  std::vector<v1::TokenLogprobs> logprobs;
  int num_events = 0;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  bool preempted = false;  // the last event said the node preempted the request
  grpc::Status status;
};

// One open server-streaming call of TokenEvents.
class TokenStreamCall {
 public:
  static std::unique_ptr<TokenStreamCall> StreamTokens(v1::DecodeService::Stub& stub,
                                                       const std::string& request_id,
                                                       const std::string& reservation_id);
  static std::unique_ptr<TokenStreamCall> Run(v1::DecodeService::Stub& stub,
                                              const v1::RunRequest& request);
  // Reads one event into *result; false at the end of the stream.
  bool ReadOne(StreamResult* result);
  // Reads to the end and collects the status.
  StreamResult ReadAll();
  void Cancel() { context_.TryCancel(); }

 private:
  TokenStreamCall() = default;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::TokenEvent>> reader_;
  StreamResult result_;
};

// Reserve with the usual fields: request id, prompt, sampling, lease.
v1::ReserveRequest ReserveFor(const std::string& request_id, const std::vector<int32_t>& prompt,
                              const v1::SamplingParams& sampling, int64_t lease_ms = 30000);
grpc::Status CallReserve(v1::DecodeService::Stub& stub, const v1::ReserveRequest& request,
                         v1::ReserveResponse* response);

// The PrefillRequest for a reservation on `decode`.
v1::PrefillRequest PrefillFor(const std::string& request_id, const std::vector<int32_t>& prompt,
                              const v1::SamplingParams& sampling, const std::string& decode_address,
                              const v1::ReserveResponse& reservation);
grpc::Status CallPrefill(v1::PrefillService::Stub& stub, const v1::PrefillRequest& request,
                         v1::PrefillResponse* response);

// One whole disaggregated request: Reserve, StreamTokens, Prefill, read the stream.
struct ClusterResult {
  grpc::Status reserve;
  v1::ReserveResponse reservation;
  grpc::Status prefill;
  v1::PrefillResponse prefill_response;
  StreamResult stream;
};
ClusterResult RunDisaggregated(DecodeHarness& decode, PrefillHarness& prefill,
                               const std::string& request_id, const std::vector<int32_t>& prompt,
                               const v1::SamplingParams& sampling,
                               const std::string& cache_salt = "");

// A decode node is back to empty: every block and tail slot free, no reservation or request.
bool AwaitDecodeIdle(DecodeHarness& decode);
bool AwaitPrefillIdle(PrefillHarness& prefill);

}  // namespace duet::nodes_test

#endif  // DUET_TESTS_NODES_NODE_TEST_UTIL_H_
