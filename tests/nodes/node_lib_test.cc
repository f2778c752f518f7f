// node/: request sampling and stop rules, flags over a config file, and the NodeControl client
// against a fake router.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/rpc/server.h"
#include "node/completion.h"
#include "node/node_control.h"
#include "node/node_options.h"
#include "tests/nodes/node_test_util.h"

namespace duet::nodes_test {
namespace {

using ::testing::HasSubstr;

TEST(ResolveSamplingTest, AbsentFieldsTakeTheDefaults) {
  v1::SamplingParams p;
  p.set_max_tokens(5);
  absl::StatusOr<node::RequestSampling> s = node::ResolveSampling(p, 260, true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->params.temperature, 1.0);
  EXPECT_EQ(s->params.top_k, 0);
  EXPECT_EQ(s->params.top_p, 1.0);
  EXPECT_EQ(s->params.repetition_penalty, 1.0);
  EXPECT_EQ(s->max_tokens, 5);
  EXPECT_FALSE(s->greedy_argmax());
  p.set_temperature(0);
  EXPECT_TRUE(node::ResolveSampling(p, 260, true)->greedy_argmax());
  p.set_logprobs(2);
  EXPECT_FALSE(node::ResolveSampling(p, 260, true)->greedy_argmax());
}

TEST(ResolveSamplingTest, BadParametersNameTheField) {
  v1::SamplingParams p;
  EXPECT_THAT(node::ResolveSampling(p, 260, true).status().message(), HasSubstr("max_tokens"));
  EXPECT_TRUE(node::ResolveSampling(p, 260, false).ok());
  p.set_max_tokens(0);
  EXPECT_THAT(node::ResolveSampling(p, 260, false).status().message(),
              HasSubstr("max_tokens must be >= 1, got 0"));
  p.set_max_tokens(3);
  p.set_logprobs(21);
  EXPECT_EQ(node::ResolveSampling(p, 260, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  p.set_logprobs(0);
  p.add_stop_token_ids(260);
  EXPECT_THAT(node::ResolveSampling(p, 260, true).status().message(),
              HasSubstr("stop_token_ids[0]"));
}

TEST(CompletionTest, StopRulesInOrder) {
  const Tokenizer& tok = TestTokenizer();
  v1::SamplingParams p = Greedy(6);
  p.set_ignore_eos(false);
  p.add_stop_strings("bc");
  p.add_stop_token_ids(50);
  auto make = [&](const v1::SamplingParams& params) {
    return node::Completion(&tok, *node::ResolveSampling(params, 260, true), {}, 260);
  };
  // Byte tokens: 'a' = 3 + 0x61.
  const int32_t a = 3 + 'a', b = 3 + 'b', c = 3 + 'c';
  node::Completion strings = make(p);
  EXPECT_EQ(strings.Append(a), node::StopKind::kNone);
  EXPECT_EQ(strings.Append(b), node::StopKind::kNone);
  EXPECT_EQ(strings.Append(c), node::StopKind::kStopString);
  node::Completion eos = make(p);
  EXPECT_EQ(eos.Append(tok.eos_id()), node::StopKind::kEos);
  node::Completion stop_id = make(p);
  EXPECT_EQ(stop_id.Append(50), node::StopKind::kStopToken);
  p.set_ignore_eos(true);
  node::Completion length = make(p);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(length.Append(tok.eos_id()), node::StopKind::kNone);
  EXPECT_EQ(length.Append(a), node::StopKind::kLength);
  EXPECT_EQ(node::ToFinishReason(node::StopKind::kStopString), v1::FINISH_REASON_STOP_STRING);
}

TEST(CompletionTest, TokenSeedsDifferPerTokenAndSeed) {
  EXPECT_NE(node::TokenSeed(1, 0), node::TokenSeed(1, 1));
  EXPECT_NE(node::TokenSeed(1, 0), node::TokenSeed(2, 0));
  EXPECT_EQ(node::TokenSeed(9, 4), node::TokenSeed(9, 4));
}

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(NodeOptionsTest, FlagsOverrideTheConfigFile) {
  const std::string config = WriteTemp("cluster.pbtxt", R"pb(
    model_path: "/models/tiny.gguf"
    backend: "cpu"
    kv { dtype: KV_DTYPE_F16 block_size: 32 num_blocks: 100 }
    scheduler { max_num_seqs: 8 max_num_batched_tokens: 64 prefill_chunk_tokens: 48 }
    heartbeat_interval_ms: 250
    nodes { node_id: "decode-0" role: NODE_ROLE_DECODE port: 5555 listen_address: "0.0.0.0" }
  )pb");
  bool help = false;
  std::string usage;
  absl::StatusOr<node::NodeOptions> o = node::ParseNodeOptions(
      "duet-decode-node", v1::NODE_ROLE_DECODE, {v1::NODE_ROLE_DECODE, v1::NODE_ROLE_COLOCATED},
      {"--config", config, "--node-id", "decode-0", "--kv-dtype", "fp8", "--host", "127.0.0.1"},
      &help, &usage);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_path, "/models/tiny.gguf");
  EXPECT_EQ(o->model_id, "tiny");
  EXPECT_EQ(o->backend, "cpu");
  EXPECT_EQ(o->kv_dtype, kv::CacheDtype::kFp8E4M3);  // the flag
  EXPECT_EQ(o->block_size, 32);
  EXPECT_EQ(o->kv_blocks, 100);
  EXPECT_EQ(o->max_num_seqs, 8);
  EXPECT_EQ(o->max_num_batched_tokens, 64);
  EXPECT_EQ(o->prefill_chunk_tokens, 48);
  EXPECT_EQ(o->heartbeat_interval_ms, 250);
  EXPECT_EQ(o->port, 5555);
  EXPECT_EQ(o->host, "127.0.0.1");  // the flag
  EXPECT_EQ(o->role, v1::NODE_ROLE_DECODE);
  EXPECT_EQ(node::EngineOptionsFor(*o).max_sequences, 8);
}

TEST(NodeOptionsTest, BadFlagsAreNamed) {
  bool help = false;
  std::string usage;
  auto parse = [&](std::vector<std::string> args) {
    return node::ParseNodeOptions("duet-decode-node", v1::NODE_ROLE_DECODE,
                                  {v1::NODE_ROLE_DECODE, v1::NODE_ROLE_COLOCATED}, args, &help,
                                  &usage)
        .status();
  };
  EXPECT_THAT(parse({}).message(), HasSubstr("--model"));
  EXPECT_THAT(parse({"--model", "m.gguf", "--role", "router"}).message(), HasSubstr("--role"));
  EXPECT_THAT(parse({"--model", "m.gguf", "--kv-dtype", "int3"}).message(), HasSubstr("int3"));
  EXPECT_THAT(parse({"--model", "m.gguf", "--backend", "metal"}).message(), HasSubstr("metal"));
  EXPECT_THAT(
      parse({"--model", "m.gguf", "--max-num-seqs", "64", "--max-batched-tokens", "8"}).message(),
      HasSubstr("--max-batched-tokens"));
  EXPECT_THAT(parse({"--model", "m.gguf", "--port", "70000"}).message(), HasSubstr("--port"));
  EXPECT_THAT(parse({"--model", "m.gguf", "--vk-cpu-threads", "-3"}).message(),
              HasSubstr("--vk-cpu-threads must be in [0, 256], got -3"));
  EXPECT_THAT(parse({"--model", "m.gguf", "--bogus"}).message(), HasSubstr("bogus"));
  EXPECT_EQ(parse({"--config", "/nonexistent.pbtxt"}).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(parse({"--help"}).ok());
  EXPECT_TRUE(help);
  EXPECT_THAT(usage, HasSubstr("--kv-dtype"));
}

// A NodeControl service that records what nodes send.
class FakeRouter final : public v1::NodeControl::Service {
 public:
  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override {
    absl::MutexLock lock(&mu_);
    registrations_.push_back(*request);
    response->set_heartbeat_interval_ms(10);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    absl::MutexLock lock(&mu_);
    heartbeats_.push_back(*request);
    response->set_known(!forget_next_);
    forget_next_ = false;
    return grpc::Status::OK;
  }

  void ForgetNext() {
    absl::MutexLock lock(&mu_);
    forget_next_ = true;
  }
  // Waits until `pred` holds over what was recorded.
  bool Await(const std::function<bool(const std::vector<v1::RegisterRequest>&,
                                      const std::vector<v1::HeartbeatRequest>&)>& pred) {
    absl::MutexLock lock(&mu_);
    auto holds = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return pred(registrations_, heartbeats_);
    };
    return mu_.AwaitWithTimeout(absl::Condition(&holds), kWait);
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::RegisterRequest> registrations_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::HeartbeatRequest> heartbeats_ ABSL_GUARDED_BY(mu_);
  bool forget_next_ ABSL_GUARDED_BY(mu_) = false;
};

TEST(NodeControlClientTest, RegistersHeartbeatsReregistersAndReportsDraining) {
  FakeRouter router;
  grpc::Service* const services[] = {&router};
  absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
      rpc::RpcServer::Start({.address = "127.0.0.1:0"}, services);
  ASSERT_TRUE(server.ok()) << server.status();
  v1::RegisterRequest registration;
  registration.set_node_id("decode-7");
  registration.set_role(v1::NODE_ROLE_DECODE);
  registration.set_address("127.0.0.1:1234");
  registration.set_total_kv_blocks(99);
  auto load = [] {
    v1::NodeLoad l;
    l.set_free_kv_blocks(42);
    l.set_total_kv_blocks(99);
    return l;
  };
  absl::StatusOr<std::unique_ptr<node::NodeControlClient>> client =
      node::NodeControlClient::Start((*server)->address(), registration, load, absl::Seconds(1));
  ASSERT_TRUE(client.ok()) << client.status();
  using Regs = std::vector<v1::RegisterRequest>;
  using Beats = std::vector<v1::HeartbeatRequest>;
  ASSERT_TRUE(router.Await([](const Regs& r, const Beats& h) {
    return r.size() == 1 && h.size() >= 2;  // the router's 10 ms interval applies
  }));
  router.Await([](const Regs& r, const Beats& h) {
    EXPECT_EQ(r[0].node_id(), "decode-7");
    EXPECT_EQ(r[0].total_kv_blocks(), 99);
    EXPECT_EQ(h[0].load().free_kv_blocks(), 42);
    EXPECT_FALSE(h[0].draining());
    return true;
  });
  router.ForgetNext();
  ASSERT_TRUE(router.Await([](const Regs& r, const Beats&) { return r.size() == 2; }));
  (*client)->SetDraining();
  EXPECT_TRUE((*client)->AwaitDrainingReported(kWait));
  ASSERT_TRUE(router.Await([](const Regs&, const Beats& h) { return h.back().draining(); }));
}

}  // namespace
}  // namespace duet::nodes_test
