#include "tests/nodes/node_test_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <utility>

#include "common/kv/kv_payload.h"
#include "common/model/shapes.h"
#include "common/model/synthetic_model.h"
#include "common/rpc/channel.h"
#include "tests/engine/engine_test_util.h"

namespace duet::nodes_test {

std::shared_ptr<const GgufFile> TestModel() {
  static const std::shared_ptr<const GgufFile> file = [] {
    ModelShape shape = testing::TinyShape();
    shape.name = "tiny-4-layers";
    shape.num_layers = 4;
    return testing::SyntheticFile(shape, GgmlType::kQ8_0, 41);
  }();
  return file;
}

std::string TestModelFile() {
  static const std::string path = [] {
    // A directory of this process's own: test processes run in parallel and must not write
    // the same file (the file name gives the model id, so it stays the same).
    const std::string dir = ::testing::TempDir() + "/duet-nodes-" + std::to_string(getpid());
    std::filesystem::create_directories(dir);
    std::string p = dir + "/" + kTestModelFileId + ".gguf";
    SyntheticModelOptions options;
    options.shape = testing::TinyShape();
    options.shape.name = "tiny-4-layers";
    options.shape.num_layers = 4;
    options.weight_type = GgmlType::kQ8_0;
    options.seed = 41;
    const absl::Status written = WriteSyntheticModel(options, p);
    EXPECT_TRUE(written.ok()) << written;
    return p;
  }();
  return path;
}

const Tokenizer& TestTokenizer() {
  static const Tokenizer* tokenizer = [] {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromGguf(*TestModel());
    EXPECT_TRUE(t.ok()) << t.status();
    return t->release();
  }();
  return *tokenizer;
}

std::unique_ptr<Engine> NewEngine(const std::string& backend, kv::CacheDtype dtype,
                                  int64_t num_blocks, int64_t max_sequences) {
  return testing::MakeEngine(backend, TestModel(),
                             testing::TestOptions(dtype, num_blocks, max_sequences));
}

std::vector<int32_t> SoloRun(const std::string& backend, kv::CacheDtype dtype,
                             const std::vector<int32_t>& prompt,
                             const v1::SamplingParams& sampling) {
  std::unique_ptr<Engine> engine = NewEngine(backend, dtype, 64, 1);
  const int32_t vocab = static_cast<int32_t>(engine->config().vocab_size);
  absl::StatusOr<node::RequestSampling> s = node::ResolveSampling(sampling, vocab, true);
  EXPECT_TRUE(s.ok()) << s.status();
  node::Completion completion(&TestTokenizer(), *s, prompt, vocab);
  std::vector<int32_t> table(64);
  for (int32_t i = 0; i < 64; ++i) table[static_cast<size_t>(i)] = i;
  absl::StatusOr<std::vector<float>> logits = engine->Prefill({table, 0, 0}, prompt);
  EXPECT_TRUE(logits.ok()) << logits.status();
  while (logits.ok()) {
    const int32_t token = completion.Sample(*logits).token;
    if (completion.Append(token) != node::StopKind::kNone) break;
    const DecodeItem item{
        {table, static_cast<int64_t>(prompt.size() + completion.generated().size()) - 1, 0}, token};
    logits = engine->DecodeStep({&item, 1});
    EXPECT_TRUE(logits.ok()) << logits.status();
  }
  return completion.generated();
}

v1::SamplingParams Greedy(int32_t max_tokens) {
  v1::SamplingParams s;
  s.set_temperature(0);
  s.set_max_tokens(max_tokens);
  s.set_ignore_eos(true);
  s.set_seed(7);
  return s;
}

std::vector<int32_t> Prompt(int64_t n, uint32_t seed) {
  return testing::SeededTokens(n, kBuiltinVocabSize, seed);
}

DecodeHarness::~DecodeHarness() {
  if (server != nullptr) server->Shutdown(absl::ZeroDuration());
  if (node != nullptr) node->Stop();
}

PrefillHarness::~PrefillHarness() {
  if (server != nullptr) server->Shutdown(absl::ZeroDuration());
  if (node != nullptr) node->Stop();
}

namespace {

template <typename Service>
std::unique_ptr<rpc::RpcServer> Serve(Service* service, std::string* address) {
  grpc::Service* const services[] = {service};
  absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
      rpc::RpcServer::Start({.address = "127.0.0.1:0"}, services);
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  *address = (*server)->address();
  return std::move(*server);
}

std::shared_ptr<grpc::Channel> Dial(const std::string& address) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(address);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return *channel;
}

}  // namespace

std::unique_ptr<DecodeHarness> StartDecode(DecodeSetup setup) {
  auto h = std::make_unique<DecodeHarness>();
  if (setup.options.model_id.empty()) setup.options.model_id = "test-model";
  h->engine = NewEngine(setup.backend, setup.dtype, setup.num_blocks, setup.options.max_num_seqs);
  if (h->engine == nullptr) return nullptr;
  h->total_blocks = setup.num_blocks;
  h->max_seqs = setup.options.max_num_seqs;
  absl::StatusOr<std::unique_ptr<decode::DecodeNode>> node =
      decode::DecodeNode::Create(setup.options, h->engine.get(), &TestTokenizer());
  EXPECT_TRUE(node.ok()) << node.status();
  if (!node.ok()) return nullptr;
  h->node = std::move(*node);
  h->server = Serve(h->node.get(), &h->address);
  if (h->server == nullptr) return nullptr;
  h->stub = v1::DecodeService::NewStub(Dial(h->address));
  return h;
}

std::unique_ptr<PrefillHarness> StartPrefill(PrefillSetup setup) {
  auto h = std::make_unique<PrefillHarness>();
  if (setup.options.model_id.empty()) setup.options.model_id = "test-model";
  h->engine = NewEngine(setup.backend, setup.dtype, setup.num_blocks, setup.options.max_num_seqs);
  if (h->engine == nullptr) return nullptr;
  h->total_blocks = setup.num_blocks;
  absl::StatusOr<std::unique_ptr<prefill::PrefillNode>> node =
      prefill::PrefillNode::Create(setup.options, h->engine.get(), &TestTokenizer());
  EXPECT_TRUE(node.ok()) << node.status();
  if (!node.ok()) return nullptr;
  h->node = std::move(*node);
  h->server = Serve(h->node.get(), &h->address);
  if (h->server == nullptr) return nullptr;
  h->stub = v1::PrefillService::NewStub(Dial(h->address));
  return h;
}

std::unique_ptr<TokenStreamCall> TokenStreamCall::StreamTokens(v1::DecodeService::Stub& stub,
                                                               const std::string& request_id,
                                                               const std::string& reservation_id) {
  std::unique_ptr<TokenStreamCall> call(new TokenStreamCall());
  v1::StreamTokensRequest request;
  request.set_request_id(request_id);
  request.set_reservation_id(reservation_id);
  call->reader_ = stub.StreamTokens(&call->context_, request);
  return call;
}

std::unique_ptr<TokenStreamCall> TokenStreamCall::Run(v1::DecodeService::Stub& stub,
                                                      const v1::RunRequest& request) {
  std::unique_ptr<TokenStreamCall> call(new TokenStreamCall());
  call->reader_ = stub.Run(&call->context_, request);
  return call;
}

bool TokenStreamCall::ReadOne(StreamResult* result) {
  v1::TokenEvent event;
  if (!reader_->Read(&event)) return false;
  ++result_.num_events;
  result_.tokens.insert(result_.tokens.end(), event.token_ids().begin(), event.token_ids().end());
  result_.logprobs.insert(result_.logprobs.end(), event.logprobs().begin(), event.logprobs().end());
  if (event.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    EXPECT_EQ(result_.finish, v1::FINISH_REASON_UNSPECIFIED) << "two last events";
    result_.finish = event.finish_reason();
    result_.usage = event.usage();
  }
  if (event.preempted()) result_.preempted = true;
  if (result != nullptr) *result = result_;
  return true;
}

StreamResult TokenStreamCall::ReadAll() {
  while (ReadOne(nullptr)) {
  }
  result_.status = reader_->Finish();
  return result_;
}

v1::ReserveRequest ReserveFor(const std::string& request_id, const std::vector<int32_t>& prompt,
                              const v1::SamplingParams& sampling, int64_t lease_ms) {
  v1::ReserveRequest r;
  r.set_request_id(request_id);
  r.set_num_prompt_tokens(static_cast<int64_t>(prompt.size()));
  *r.mutable_sampling() = sampling;
  r.set_lease_ms(lease_ms);
  for (int32_t t : prompt) r.add_prompt_token_ids(t);
  r.set_model_id("test-model");
  return r;
}

grpc::Status CallReserve(v1::DecodeService::Stub& stub, const v1::ReserveRequest& request,
                         v1::ReserveResponse* response) {
  grpc::ClientContext context;
  return stub.Reserve(&context, request, response);
}

v1::PrefillRequest PrefillFor(const std::string& request_id, const std::vector<int32_t>& prompt,
                              const v1::SamplingParams& sampling, const std::string& decode_address,
                              const v1::ReserveResponse& reservation) {
  v1::PrefillRequest r;
  r.set_request_id(request_id);
  for (int32_t t : prompt) r.add_token_ids(t);
  *r.mutable_sampling() = sampling;
  r.set_decode_address(decode_address);
  r.set_reservation_id(reservation.reservation_id());
  r.set_decode_block_size(reservation.block_size());
  r.set_decode_kv_dtype(reservation.kv_dtype());
  r.set_decode_cached_blocks(reservation.num_cached_blocks());  // as the router does
  r.set_model_id("test-model");
  return r;
}

grpc::Status CallPrefill(v1::PrefillService::Stub& stub, const v1::PrefillRequest& request,
                         v1::PrefillResponse* response) {
  grpc::ClientContext context;
  return stub.Prefill(&context, request, response);
}

ClusterResult RunDisaggregated(DecodeHarness& decode, PrefillHarness& prefill,
                               const std::string& request_id, const std::vector<int32_t>& prompt,
                               const v1::SamplingParams& sampling,
                               const std::string& cache_salt) {
  ClusterResult result;
  v1::ReserveRequest reserve = ReserveFor(request_id, prompt, sampling);
  reserve.set_cache_salt(cache_salt);
  v1::ReserveResponse& reservation = result.reservation;
  result.reserve = CallReserve(*decode.stub, reserve, &reservation);
  if (!result.reserve.ok()) return result;
  std::unique_ptr<TokenStreamCall> stream =
      TokenStreamCall::StreamTokens(*decode.stub, request_id, reservation.reservation_id());
  v1::PrefillRequest request =
      PrefillFor(request_id, prompt, sampling, decode.address, reservation);
  request.set_cache_salt(cache_salt);
  result.prefill = CallPrefill(*prefill.stub, request, &result.prefill_response);
  result.stream = stream->ReadAll();
  return result;
}

bool AwaitDecodeIdle(DecodeHarness& decode) {
  const int64_t total = decode.total_blocks;
  const int64_t slots = decode.max_seqs;
  return decode.node->AwaitState(
      [total, slots](const decode::DecodeNode::Snapshot& s) {
        return s.free_blocks == total && s.free_tail_slots == slots && s.num_reservations == 0 &&
               s.num_requests == 0 && s.num_running == 0 && s.num_waiting == 0;
      },
      kWait);
}

bool AwaitPrefillIdle(PrefillHarness& prefill) {
  const int64_t total = prefill.total_blocks;
  return prefill.node->AwaitState(
      [total](const prefill::PrefillNode::Snapshot& s) {
        return s.free_blocks == total && s.num_requests == 0;
      },
      kWait);
}

}  // namespace duet::nodes_test
