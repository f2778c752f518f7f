// duet-prefill-node and duet-decode-node as real processes on port 0: the "listening on" line,
// registration and heartbeats with a (fake) router, a request through both, and the drain on
// SIGTERM (a heartbeat with draining = true, exit code 0). Also --help and a bad flag.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/model/shapes.h"
#include "common/model/synthetic_model.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "tests/engine/engine_test_util.h"
#include "tests/base/child_process.h"
#include "tests/nodes/node_test_util.h"

namespace duet::nodes_test {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using ::duet::testing::Process;

class Router final : public v1::NodeControl::Service {
 public:
  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override {
    absl::MutexLock lock(&mu_);
    registered_.push_back(*request);
    response->set_heartbeat_interval_ms(20);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    absl::MutexLock lock(&mu_);
    if (request->draining()) draining_.push_back(request->node_id());
    response->set_known(true);
    return grpc::Status::OK;
  }
  // The registration of `node_id`, once it arrived.
  v1::RegisterRequest AwaitRegistered(const std::string& node_id) {
    absl::MutexLock lock(&mu_);
    auto found = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const auto& r : registered_) {
        if (r.node_id() == node_id) return true;
      }
      return false;
    };
    mu_.AwaitWithTimeout(absl::Condition(&found), kWait);
    for (const auto& r : registered_) {
      if (r.node_id() == node_id) return r;
    }
    return {};
  }
  bool SawDraining(const std::string& node_id) {
    absl::MutexLock lock(&mu_);
    for (const std::string& n : draining_) {
      if (n == node_id) return true;
    }
    return false;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::RegisterRequest> registered_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> draining_ ABSL_GUARDED_BY(mu_);
};

std::vector<std::string> NodeArgs(const std::string& binary, const std::string& node_id,
                                  const std::string& router) {
  return {binary, "--model",        TestModelFile(), "--backend",      "cpu",   "--kv-dtype",
          "f32",  "--port",         "0",         "--node-id",      node_id, "--router",
          router, "--kv-blocks",    "32",        "--max-num-seqs", "4",     "--log-level",
          "warn", "--heartbeat-ms", "20"};
}

std::string ListeningAddress(Process& p) {
  const std::string line = p.ReadLine();
  EXPECT_THAT(line, StartsWith("listening on 127.0.0.1:"));
  return line.substr(std::string("listening on ").size());
}

TEST(NodeProcessTest, ServeRegisterAndDrainOnSigterm) {
  Router router;
  grpc::Service* const services[] = {&router};
  absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
      rpc::RpcServer::Start({.address = "127.0.0.1:0"}, services);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string router_address = (*server)->address();

  Process decode(NodeArgs(DUET_DECODE_NODE_BINARY, "decode-p", router_address));
  const std::string decode_address = ListeningAddress(decode);
  Process prefill(NodeArgs(DUET_PREFILL_NODE_BINARY, "prefill-p", router_address));
  const std::string prefill_address = ListeningAddress(prefill);

  const v1::RegisterRequest d = router.AwaitRegistered("decode-p");
  EXPECT_EQ(d.role(), v1::NODE_ROLE_DECODE);
  EXPECT_EQ(d.address(), decode_address);
  EXPECT_EQ(d.model_id(), "tiny-nodes");
  EXPECT_EQ(d.total_kv_blocks(), 32);
  EXPECT_EQ(d.block_size(), 16);
  EXPECT_EQ(d.kv_dtype(), v1::KV_DTYPE_F32);
  const v1::RegisterRequest p = router.AwaitRegistered("prefill-p");
  EXPECT_EQ(p.role(), v1::NODE_ROLE_PREFILL);
  EXPECT_EQ(p.address(), prefill_address);

  // One request through both processes.
  auto decode_stub = v1::DecodeService::NewStub(*rpc::CreateChannel(decode_address));
  auto prefill_stub = v1::PrefillService::NewStub(*rpc::CreateChannel(prefill_address));
  const std::vector<int32_t> prompt = Prompt(29, 3);
  const v1::SamplingParams sampling = Greedy(7);
  v1::ReserveRequest reserve = ReserveFor("r-p", prompt, sampling);
  reserve.set_model_id("tiny-nodes");
  v1::ReserveResponse reservation;
  ASSERT_TRUE(CallReserve(*decode_stub, reserve, &reservation).ok());
  std::unique_ptr<TokenStreamCall> stream =
      TokenStreamCall::StreamTokens(*decode_stub, "r-p", reservation.reservation_id());
  v1::PrefillRequest request = PrefillFor("r-p", prompt, sampling, decode_address, reservation);
  request.set_model_id("tiny-nodes");
  v1::PrefillResponse out;
  const grpc::Status prefilled = CallPrefill(*prefill_stub, request, &out);
  ASSERT_TRUE(prefilled.ok()) << prefilled.error_message();
  const StreamResult got = stream->ReadAll();
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(got.tokens, SoloRun("cpu", kv::CacheDtype::kF32, prompt, sampling));

  decode.Signal(SIGTERM);
  prefill.Signal(SIGTERM);
  EXPECT_EQ(decode.Wait(), 0);
  EXPECT_EQ(prefill.Wait(), 0);
  EXPECT_TRUE(router.SawDraining("decode-p"));
  EXPECT_TRUE(router.SawDraining("prefill-p"));
}

TEST(NodeProcessTest, HelpAndBadFlags) {
  Process help({DUET_DECODE_NODE_BINARY, "--help"});
  EXPECT_THAT(help.ReadAll(), HasSubstr("--role"));
  EXPECT_EQ(help.Wait(), 0);
  Process bad({DUET_PREFILL_NODE_BINARY, "--model", "x.gguf", "--kv-dtype", "int2"});
  EXPECT_EQ(bad.Wait(), 2);
  Process missing({DUET_PREFILL_NODE_BINARY, "--model", "/nonexistent/model.gguf"});
  EXPECT_EQ(missing.Wait(), 1);
}

}  // namespace
}  // namespace duet::nodes_test
