// The router in process on 127.0.0.1:0 with fake decode and prefill nodes (fake_nodes.h), which
// register through the real NodeControl service. A FakeClock drives heartbeat timeouts; tests
// wait on the fakes' observations (condition variables), never on sleeps.
#include <grpcpp/client_context.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "common/rpc/status_convert.h"
#include "duet/v1/duet.grpc.pb.h"
#include "duet/v1/internal.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/router_service.h"
#include "tests/router/fake_nodes.h"
#include "tests/router/test_model.h"

namespace duet::router {
namespace {

using duet::v1::GenerateRequest;
using duet::v1::GenerateResponse;
using duet::v1::TokenEvent;
using testing::ByteToken;
using testing::DecodeObservations;
using testing::DecodeScript;
using ::testing::ElementsAre;
using testing::FakeDecodeNode;
using testing::FakePrefillNode;
using ::testing::HasSubstr;
using testing::kEos;
using testing::PrefillBehavior;
using testing::PrefillObservations;
using ::testing::StartsWith;
using testing::TinyModel;

constexpr absl::Duration kHeartbeatInterval = absl::Seconds(1);
constexpr absl::Duration kHeartbeatTimeout = absl::Seconds(5);

TokenEvent Event(std::vector<int32_t> ids,
                 duet::v1::FinishReason finish = duet::v1::FINISH_REASON_UNSPECIFIED) {
  TokenEvent event;
  for (int32_t id : ids) event.add_token_ids(id);
  event.set_finish_reason(finish);
  return event;
}

// "hé!" then EOS, split so that "é" (C3 A9) spans two events.
DecodeScript HelloScript() {
  DecodeScript script;
  script.events = {Event({ByteToken('h'), ByteToken(0xc3)}), Event({ByteToken(0xa9)}),
                   Event({ByteToken('!')}), Event({kEos}, duet::v1::FINISH_REASON_STOP)};
  return script;
}

struct GenerateResult {
  std::vector<GenerateResponse> messages;
  grpc::Status status;

  std::vector<int32_t> tokens() const {
    std::vector<int32_t> ids;
    for (const GenerateResponse& m : messages)
      ids.insert(ids.end(), m.token_ids().begin(), m.token_ids().end());
    return ids;
  }
  std::string text() const {
    std::string text;
    for (const GenerateResponse& m : messages) text += m.text();
    return text;
  }
};

GenerateRequest Prompt(const std::string& text) {
  GenerateRequest request;
  request.set_text(text);
  return request;
}

class RouterE2eTest : public ::testing::Test {
 protected:
  static RouterOptions Options() {
    RouterOptions options;
    options.heartbeat_interval = kHeartbeatInterval;
    options.heartbeat_timeout = kHeartbeatTimeout;
    options.sweep_interval = absl::ZeroDuration();  // the tests sweep
    options.release_timeout = absl::Seconds(10);
    return options;
  }

  void SetUp() override { StartRouter(Options()); }
  void TearDown() override {
    StopRouter();
    absl::MutexLock lock(&nodes_mu_);
    decodes_.clear();
    prefills_.clear();
  }

  void StartRouter(const RouterOptions& options) {
    router_ = std::make_unique<Router>(&TinyModel(), options, &clock_);
    absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
        rpc::RpcServer::Start({.address = "127.0.0.1:0"}, router_->services());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(server_->address());
    ASSERT_TRUE(channel.ok()) << channel.status();
    channel_ = *channel;
    duet_ = duet::v1::Duet::NewStub(channel_);
    control_ = duet::v1::NodeControl::NewStub(channel_);
  }

  void StopRouter() {
    if (server_ == nullptr) return;
    server_->Shutdown(absl::ZeroDuration());
    router_->WaitForIdle();
    server_.reset();
    router_.reset();
  }

  grpc::Status RegisterNode(const std::string& id, duet::v1::NodeRole role,
                            const std::string& address, int64_t blocks = 64,
                            const std::string& model = "tiny") {
    duet::v1::RegisterRequest request;
    request.set_node_id(id);
    request.set_role(role);
    request.set_address(address);
    request.set_model_id(model);
    request.set_total_kv_blocks(blocks);
    request.set_block_size(16);
    duet::v1::RegisterResponse response;
    grpc::ClientContext context;
    grpc::Status status = control_->Register(&context, request, &response);
    if (status.ok()) {
      EXPECT_EQ(response.heartbeat_interval_ms(), absl::ToInt64Milliseconds(kHeartbeatInterval));
    }
    return status;
  }

  bool Heartbeat(const std::string& id, int64_t free_blocks, bool draining = false) {
    duet::v1::HeartbeatRequest request;
    request.set_node_id(id);
    request.mutable_load()->set_free_kv_blocks(free_blocks);
    request.set_draining(draining);
    duet::v1::HeartbeatResponse response;
    grpc::ClientContext context;
    EXPECT_TRUE(control_->Heartbeat(&context, request, &response).ok());
    return response.known();
  }

  FakeDecodeNode* AddDecode(const std::string& id,
                            duet::v1::NodeRole role = duet::v1::NODE_ROLE_DECODE,
                            int64_t blocks = 64) {
    auto node = std::make_unique<FakeDecodeNode>(id);
    EXPECT_TRUE(node->Start().ok());
    node->SetScript(HelloScript());
    EXPECT_TRUE(RegisterNode(id, role, node->address(), blocks).ok());
    absl::MutexLock lock(&nodes_mu_);
    decodes_.push_back(std::move(node));
    return decodes_.back().get();
  }

  FakePrefillNode* AddPrefill(const std::string& id) {
    auto node = std::make_unique<FakePrefillNode>(
        id, [this](const std::string& address) { return FindDecode(address); });
    EXPECT_TRUE(node->Start().ok());
    EXPECT_TRUE(RegisterNode(id, duet::v1::NODE_ROLE_PREFILL, node->address(), 0).ok());
    absl::MutexLock lock(&nodes_mu_);
    prefills_.push_back(std::move(node));
    return prefills_.back().get();
  }

  FakeDecodeNode* FindDecode(const std::string& address) {
    absl::MutexLock lock(&nodes_mu_);
    for (auto& node : decodes_) {
      if (node->address() == address) return node.get();
    }
    return nullptr;
  }

  GenerateResult Generate(const GenerateRequest& request,
                          absl::Duration timeout = absl::Seconds(20)) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    std::unique_ptr<grpc::ClientReader<GenerateResponse>> reader =
        duet_->Generate(&context, request);
    GenerateResult result;
    GenerateResponse message;
    while (reader->Read(&message)) result.messages.push_back(message);
    result.status = reader->Finish();
    return result;
  }

  FakeClock clock_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<rpc::RpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<duet::v1::Duet::Stub> duet_;
  std::unique_ptr<duet::v1::NodeControl::Stub> control_;
  absl::Mutex nodes_mu_;
  std::vector<std::unique_ptr<FakeDecodeNode>> decodes_ ABSL_GUARDED_BY(nodes_mu_);
  std::vector<std::unique_ptr<FakePrefillNode>> prefills_ ABSL_GUARDED_BY(nodes_mu_);
};

// Reads messages until one carries tokens (or the stream ends); returns it.
GenerateResponse ReadUntilTokens(grpc::ClientReader<GenerateResponse>* reader) {
  GenerateResponse message;
  while (reader->Read(&message)) {
    if (message.token_ids_size() > 0) return message;
  }
  return GenerateResponse();
}

TEST_F(RouterE2eTest, StreamsTokensTextFinishAndUsage) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  FakePrefillNode* prefill = AddPrefill("prefill-0");
  prefill->SetCachedPromptTokens(2);

  const GenerateResult result = Generate(Prompt("hi"));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_THAT(result.tokens(),
              ElementsAre(ByteToken('h'), ByteToken(0xc3), ByteToken(0xa9), ByteToken('!'), kEos));
  EXPECT_EQ(result.text(), "h\xc3\xa9!");
  ASSERT_GE(result.messages.size(), 2u);
  // The first message only confirms the request id.
  EXPECT_EQ(result.messages[0].token_ids_size(), 0);
  const std::string id = result.messages[0].request_id();
  EXPECT_THAT(id, StartsWith("r-"));
  for (const GenerateResponse& m : result.messages) {
    EXPECT_EQ(m.request_id(), id);
    // "h" arrives with the first half of "é", which is held back.
    if (!m.token_ids().empty() && m.token_ids(0) == ByteToken('h')) {
      EXPECT_EQ(m.text(), "h");
    }
  }
  const GenerateResponse& last = result.messages.back();
  EXPECT_EQ(last.finish_reason(), duet::v1::FINISH_REASON_STOP);
  const std::vector<int32_t> prompt = TinyModel().tokenizer->Encode("hi", true);
  EXPECT_EQ(last.usage().prompt_tokens(), static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(last.usage().completion_tokens(), 5);
  EXPECT_EQ(last.usage().cached_prompt_tokens(), 2);
  for (size_t i = 0; i + 1 < result.messages.size(); ++i) {
    EXPECT_EQ(result.messages[i].finish_reason(), duet::v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_FALSE(result.messages[i].has_usage());
  }

  // What the nodes were asked.
  const DecodeObservations d = decode->observations();
  ASSERT_EQ(d.reserves.size(), 1u);
  const duet::v1::ReserveRequest& reserve = d.reserves[0];
  EXPECT_EQ(reserve.request_id(), id);
  EXPECT_EQ(reserve.num_prompt_tokens(), static_cast<int64_t>(prompt.size()));
  EXPECT_THAT(reserve.prompt_token_ids(), ::testing::ElementsAreArray(prompt));
  EXPECT_EQ(reserve.lease_ms(), 10000);
  EXPECT_EQ(reserve.model_id(), "tiny");
  EXPECT_EQ(reserve.sampling().max_tokens(), 256);
  EXPECT_TRUE(reserve.sampling().has_seed());
  EXPECT_EQ(reserve.speculation(), duet::v1::SPECULATION_OFF);
  ASSERT_EQ(d.streams.size(), 1u);
  EXPECT_EQ(d.streams[0].reservation_id(), "res-0");
  EXPECT_EQ(d.streams[0].request_id(), id);
  EXPECT_TRUE(d.releases.empty());
  const PrefillObservations p = prefill->observations();
  ASSERT_EQ(p.prefills.size(), 1u);
  EXPECT_EQ(p.prefills[0].request_id(), id);
  EXPECT_EQ(p.prefills[0].decode_address(), decode->address());
  EXPECT_EQ(p.prefills[0].reservation_id(), "res-0");
  EXPECT_EQ(p.prefills[0].decode_block_size(), 16);
  EXPECT_EQ(p.prefills[0].decode_kv_dtype(), duet::v1::KV_DTYPE_F32);
  EXPECT_THAT(p.prefills[0].token_ids(), ::testing::ElementsAreArray(prompt));
  EXPECT_EQ(router_->state().num_queued(), 0);
}

TEST_F(RouterE2eTest, ClientRequestIdIsEchoedAndRouterIdsAreUnique) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  GenerateRequest request = Prompt("hi");
  request.set_request_id("client-42");
  const GenerateResult first = Generate(request);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  for (const GenerateResponse& m : first.messages) EXPECT_EQ(m.request_id(), "client-42");
  const GenerateResult second = Generate(Prompt("hi"));
  ASSERT_TRUE(second.status.ok());
  const DecodeObservations d = decode->observations();
  ASSERT_EQ(d.reserves.size(), 2u);
  EXPECT_THAT(d.reserves[0].request_id(), StartsWith("r-"));
  EXPECT_NE(d.reserves[0].request_id(), d.reserves[1].request_id());
  EXPECT_EQ(second.messages[0].request_id(), d.reserves[1].request_id());
}

TEST_F(RouterE2eTest, ClientDeadlineIsPropagatedToNodeCalls) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  grpc::ClientContext context;
  const auto deadline = absl::ToChronoTime(absl::Now() + absl::Seconds(30));
  context.set_deadline(deadline);
  auto reader = duet_->Generate(&context, Prompt("hi"));
  GenerateResponse message;
  while (reader->Read(&message)) {
  }
  ASSERT_TRUE(reader->Finish().ok());
  const DecodeObservations d = decode->observations();
  ASSERT_EQ(d.reserve_deadlines.size(), 1u);
  EXPECT_LE(d.reserve_deadlines[0], deadline + std::chrono::seconds(1));
  EXPECT_GE(d.reserve_deadlines[0], deadline - std::chrono::seconds(10));
}

TEST_F(RouterE2eTest, ClientCancelMidStreamCancelsTheDecodeStreamAndReleases) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  DecodeScript script;
  script.events = {Event({ByteToken('a')})};
  script.hang_after_events = true;
  decode->SetScript(script);

  grpc::ClientContext context;
  auto reader = duet_->Generate(&context, Prompt("hi"));
  ASSERT_EQ(ReadUntilTokens(reader.get()).token_ids_size(), 1);
  context.TryCancel();
  GenerateResponse message;
  while (reader->Read(&message)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  ASSERT_TRUE(decode->WaitFor([](const DecodeObservations& o) {
    return o.streams_cancelled == 1 && o.releases.size() == 1;
  }));
  const DecodeObservations d = decode->observations();
  EXPECT_EQ(d.releases[0].reason(), "client cancelled");
  EXPECT_EQ(d.releases[0].reservation_id(), "res-0");
  router_->WaitForIdle();
  EXPECT_EQ(router_->state().num_queued(), 0);
}

TEST_F(RouterE2eTest, ClientCancelDuringPrefillCancelsThePrefill) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  FakePrefillNode* prefill = AddPrefill("prefill-0");
  prefill->SetBehavior(PrefillBehavior::kHang);

  grpc::ClientContext context;
  auto reader = duet_->Generate(&context, Prompt("hi"));
  GenerateResponse header;
  ASSERT_TRUE(reader->Read(&header));  // sent once the reservation is made
  ASSERT_TRUE(
      prefill->WaitFor([](const PrefillObservations& o) { return o.prefills.size() == 1; }));
  context.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  EXPECT_TRUE(prefill->WaitFor([](const PrefillObservations& o) { return o.cancelled == 1; }));
  EXPECT_TRUE(decode->WaitFor([](const DecodeObservations& o) {
    return o.streams_cancelled == 1 && o.releases.size() == 1;
  }));
}

TEST_F(RouterE2eTest, FailedPrefillIsRetriedOnTheOtherPrefillNode) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  FakePrefillNode* a = AddPrefill("prefill-a");
  FakePrefillNode* b = AddPrefill("prefill-b");
  a->SetBehavior(PrefillBehavior::kFail,
                 grpc::Status(grpc::StatusCode::UNAVAILABLE, "lost the decode node"));

  const GenerateResult result = Generate(Prompt("hi"));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.text(), "h\xc3\xa9!");
  EXPECT_EQ(a->observations().prefills.size(), 1u);
  EXPECT_EQ(b->observations().prefills.size(), 1u);
  const DecodeObservations d = decode->observations();
  ASSERT_EQ(d.reserves.size(), 2u);  // a fresh reservation for the retry
  ASSERT_EQ(d.releases.size(), 1u);
  EXPECT_EQ(d.releases[0].reservation_id(), "res-0");
  EXPECT_THAT(d.releases[0].reason(), HasSubstr("prefill failed"));
  EXPECT_EQ(b->observations().prefills[0].reservation_id(), "res-1");
}

TEST_F(RouterE2eTest, PrefillNodeLostDuringPrefillIsRetriedElsewhere) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  FakePrefillNode* a = AddPrefill("prefill-a");
  FakePrefillNode* b = AddPrefill("prefill-b");
  a->SetBehavior(PrefillBehavior::kHang);

  grpc::ClientContext context;
  auto reader = duet_->Generate(&context, Prompt("hi"));
  ASSERT_TRUE(a->WaitFor([](const PrefillObservations& o) { return o.prefills.size() == 1; }));
  clock_.Advance(kHeartbeatTimeout + absl::Seconds(1));
  ASSERT_TRUE(Heartbeat("decode-0", 64));
  ASSERT_TRUE(Heartbeat("prefill-b", 0));
  router_->SweepNodes();  // prefill-a is lost

  GenerateResult result;
  GenerateResponse message;
  while (reader->Read(&message)) result.messages.push_back(message);
  result.status = reader->Finish();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.text(), "h\xc3\xa9!");
  EXPECT_TRUE(a->WaitFor([](const PrefillObservations& o) { return o.cancelled == 1; }));
  EXPECT_EQ(b->observations().prefills.size(), 1u);
  const DecodeObservations d = decode->observations();
  EXPECT_EQ(d.reserves.size(), 2u);
  ASSERT_EQ(d.releases.size(), 1u);
  EXPECT_EQ(d.releases[0].reservation_id(), "res-0");
}

TEST_F(RouterE2eTest, FailedPrefillWithoutAnotherNodeEndsWithItsError) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  FakePrefillNode* prefill = AddPrefill("prefill-0");
  prefill->SetBehavior(PrefillBehavior::kFail,
                       grpc::Status(grpc::StatusCode::INTERNAL, "kernel fault"));
  const GenerateResult result = Generate(Prompt("hi"));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(result.status.error_message(), HasSubstr("prefill node prefill-0"));
  EXPECT_THAT(result.status.error_message(), HasSubstr("kernel fault"));
  EXPECT_TRUE(decode->WaitFor([](const DecodeObservations& o) { return o.releases.size() == 1; }));

  // A request the node calls invalid is not retried and keeps its code.
  FakePrefillNode* other = AddPrefill("prefill-1");
  ASSERT_TRUE(Heartbeat("prefill-0", 0));  // clears its pending charge: it is picked first
  prefill->SetBehavior(PrefillBehavior::kFail,
                       grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad prompt"));
  const GenerateResult invalid = Generate(Prompt("hi"));
  EXPECT_EQ(invalid.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(other->observations().prefills.empty());
}

TEST_F(RouterE2eTest, FullClusterIsResourceExhaustedWithRetryHint) {
  StopRouter();
  RouterOptions options = Options();
  options.max_queue_wait = absl::ZeroDuration();  // fail at once instead of waiting
  StartRouter(options);
  AddDecode("decode-0", duet::v1::NODE_ROLE_DECODE, /*blocks=*/4);
  AddPrefill("prefill-0");
  ASSERT_TRUE(Heartbeat("decode-0", /*free_blocks=*/0));
  const GenerateResult result = Generate(Prompt("hi"));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(result.status.error_message(), HasSubstr("no decode node has"));
  EXPECT_EQ(rpc::GetRetryAfter(result.status), kHeartbeatInterval);
  EXPECT_TRUE(result.messages.empty());

  // A prompt larger than every pool never fits.
  GenerateRequest huge;
  for (int i = 0; i < 100; ++i) huge.mutable_token_ids()->add_ids(7);
  EXPECT_EQ(Generate(huge).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(RouterE2eTest, FullClusterQueuesTheRequestUntilCapacityFrees) {
  AddDecode("decode-0", duet::v1::NODE_ROLE_DECODE, /*blocks=*/4);
  AddPrefill("prefill-0");
  ASSERT_TRUE(Heartbeat("decode-0", /*free_blocks=*/0));
  std::atomic<bool> done{false};
  GenerateResult result;
  std::thread client([&] {
    result = Generate(Prompt("hi"));
    done = true;
  });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(done.load());  // waiting in the queue, not failed
  ASSERT_TRUE(Heartbeat("decode-0", /*free_blocks=*/4));
  client.join();
  EXPECT_TRUE(result.status.ok()) << result.status.error_message();
}

TEST_F(RouterE2eTest, FullQueueIsResourceExhaustedWithRetryHint) {
  StopRouter();
  RouterOptions options = Options();
  options.max_queued_requests = 1;
  StartRouter(options);
  AddDecode("decode-0");
  FakePrefillNode* prefill = AddPrefill("prefill-0");
  prefill->SetBehavior(PrefillBehavior::kHang);

  grpc::ClientContext context;
  auto waiting = duet_->Generate(&context, Prompt("hi"));
  GenerateResponse header;
  ASSERT_TRUE(waiting->Read(&header));
  const GenerateResult rejected = Generate(Prompt("hi"));
  EXPECT_EQ(rejected.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(rejected.status.error_message(), HasSubstr("queue is full"));
  EXPECT_EQ(rpc::GetRetryAfter(rejected.status), kHeartbeatInterval);

  context.TryCancel();
  EXPECT_EQ(waiting->Finish().error_code(), grpc::StatusCode::CANCELLED);
  router_->WaitForIdle();
  prefill->SetBehavior(PrefillBehavior::kPush);
  EXPECT_TRUE(Generate(Prompt("hi")).status.ok());
}

TEST_F(RouterE2eTest, NoNodesIsUnavailable) {
  const GenerateResult result = Generate(Prompt("hi"));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(result.status.error_message(), HasSubstr("no nodes are registered"));
  EXPECT_TRUE(rpc::GetRetryAfter(result.status).has_value());
}

TEST_F(RouterE2eTest, DrainingDecodeNodeGetsNoRequests) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  ASSERT_TRUE(Heartbeat("decode-0", 64, /*draining=*/true));
  EXPECT_EQ(Generate(Prompt("hi")).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(decode->observations().reserves.empty());
}

TEST_F(RouterE2eTest, UnknownModelIsNotFoundAndBadParametersInvalid) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  GenerateRequest unknown = Prompt("hi");
  unknown.set_model("nope");
  const GenerateResult result = Generate(unknown);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(result.status.error_message(),
            "model 'nope' is not served by this cluster (it serves 'tiny')");

  GenerateRequest bad = Prompt("hi");
  bad.mutable_sampling()->set_max_tokens(0);
  const GenerateResult invalid = Generate(bad);
  EXPECT_EQ(invalid.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(invalid.status.error_message(), "max_tokens must be >= 1, got 0");
  EXPECT_TRUE(decode->observations().reserves.empty());
}

TEST_F(RouterE2eTest, DecodeNodeMissingHeartbeatsMidStreamEndsWithUnavailable) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  DecodeScript script;
  script.events = {Event({ByteToken('a')})};
  script.hang_after_events = true;
  decode->SetScript(script);

  grpc::ClientContext context;
  auto reader = duet_->Generate(&context, Prompt("hi"));
  ASSERT_EQ(ReadUntilTokens(reader.get()).token_ids_size(), 1);
  clock_.Advance(kHeartbeatTimeout + absl::Seconds(1));
  router_->SweepNodes();
  std::vector<GenerateResponse> rest;
  GenerateResponse message;
  while (reader->Read(&message)) rest.push_back(message);
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("decode node decode-0 (" + decode->address()));
  EXPECT_THAT(status.error_message(), HasSubstr("was lost: no heartbeat for 6s"));
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].finish_reason(), duet::v1::FINISH_REASON_ERROR);
  EXPECT_EQ(rest[0].usage().completion_tokens(), 1);
  EXPECT_TRUE(
      decode->WaitFor([](const DecodeObservations& o) { return o.streams_cancelled == 1; }));
  EXPECT_FALSE(Heartbeat("decode-0", 64));  // forgotten: it must register again
}

TEST_F(RouterE2eTest, DecodeStreamErrorMidStreamEndsWithUnavailableNamingTheNode) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  DecodeScript script;
  // As the proto says: an event with FINISH_REASON_ERROR, then the error status.
  script.events = {Event({ByteToken('a')}), Event({ByteToken('b')}, duet::v1::FINISH_REASON_ERROR)};
  script.final_status = grpc::Status(grpc::StatusCode::INTERNAL, "engine fault");
  decode->SetScript(script);
  const GenerateResult result = Generate(Prompt("hi"));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(result.status.error_message(),
              HasSubstr("decode node decode-0 (" + decode->address() +
                        ") failed mid-stream: INTERNAL: engine fault"));
  EXPECT_EQ(result.text(), "ab");
  int num_error = 0;
  for (const GenerateResponse& m : result.messages) {
    num_error += m.finish_reason() == duet::v1::FINISH_REASON_ERROR;
  }
  EXPECT_EQ(num_error, 1);
  EXPECT_EQ(result.messages.back().finish_reason(), duet::v1::FINISH_REASON_ERROR);
  EXPECT_EQ(result.messages.back().usage().completion_tokens(), 2);

  // A node that says FINISH_REASON_ERROR but ends with OK breaks the contract.
  script.final_status = grpc::Status::OK;
  decode->SetScript(script);
  const GenerateResult bad = Generate(Prompt("hi"));
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(bad.status.error_message(), HasSubstr("reported FINISH_REASON_ERROR but ended"));
}

TEST_F(RouterE2eTest, DecodeFailureBeforeAnyTokenIsRetriedOnAnotherDecodeNode) {
  FakeDecodeNode* broken = AddDecode("decode-0");
  AddPrefill("prefill-0");
  DecodeScript script;
  script.final_status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "pool corrupted");
  broken->SetScript(script);
  // Alone, its failure is what the client sees.
  const GenerateResult alone = Generate(Prompt("hi"));
  EXPECT_EQ(alone.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(alone.status.error_message(),
              HasSubstr("decode node decode-0 (" + broken->address() +
                        ") failed the token stream: UNAVAILABLE: pool corrupted"));
  EXPECT_TRUE(alone.tokens().empty());

  FakeDecodeNode* healthy = AddDecode("decode-1");
  ASSERT_TRUE(Heartbeat("decode-0", 100));  // the broken node looks emptiest: picked first
  ASSERT_TRUE(Heartbeat("decode-1", 64));
  const GenerateResult retried = Generate(Prompt("hi"));
  ASSERT_TRUE(retried.status.ok()) << retried.status.error_message();
  EXPECT_EQ(retried.text(), "h\xc3\xa9!");
  EXPECT_EQ(broken->observations().reserves.size(), 2u);
  EXPECT_EQ(healthy->observations().reserves.size(), 1u);
}

TEST_F(RouterE2eTest, ReRegistrationFailsTheOldIncarnationsRequests) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  DecodeScript script;
  script.events = {Event({ByteToken('a')})};
  script.hang_after_events = true;
  decode->SetScript(script);
  grpc::ClientContext context;
  auto reader = duet_->Generate(&context, Prompt("hi"));
  ASSERT_EQ(ReadUntilTokens(reader.get()).token_ids_size(), 1);
  ASSERT_TRUE(RegisterNode("decode-0", duet::v1::NODE_ROLE_DECODE, decode->address()).ok());
  GenerateResponse message;
  while (reader->Read(&message)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("registered again"));
}

TEST_F(RouterE2eTest, StopStringEndsTheRequestAndCancelsTheDecodeStream) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  DecodeScript script;
  script.events = {Event({ByteToken('o'), ByteToken('k'), ByteToken('S')}),
                   Event({ByteToken('T'), ByteToken('x')})};
  script.hang_after_events = true;  // a node that does not stop by itself
  decode->SetScript(script);
  GenerateRequest request = Prompt("hi");
  request.mutable_sampling()->add_stop_strings("ST");
  const GenerateResult result = Generate(request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.text(), "ok");
  EXPECT_EQ(result.tokens().back(), ByteToken('T'));
  EXPECT_EQ(result.messages.back().finish_reason(), duet::v1::FINISH_REASON_STOP_STRING);
  EXPECT_EQ(result.messages.back().usage().completion_tokens(), 4);
  EXPECT_TRUE(decode->WaitFor([](const DecodeObservations& o) {
    return o.streams_cancelled == 1 && o.releases.size() == 1;
  }));
}

TEST_F(RouterE2eTest, ColocatedNodeRunsTheWholeRequest) {
  FakeDecodeNode* node = AddDecode("colo-0", duet::v1::NODE_ROLE_COLOCATED);
  DecodeScript script = HelloScript();
  script.events.back().mutable_usage()->set_cached_prompt_tokens(3);
  node->SetScript(script);
  const GenerateResult result = Generate(Prompt("hi"));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.text(), "h\xc3\xa9!");
  EXPECT_EQ(result.messages.back().usage().cached_prompt_tokens(), 3);
  const DecodeObservations d = node->observations();
  ASSERT_EQ(d.runs.size(), 1u);
  EXPECT_TRUE(d.reserves.empty());
  EXPECT_EQ(d.runs[0].model_id(), "tiny");
  EXPECT_EQ(d.runs[0].token_ids_size(),
            static_cast<int>(TinyModel().tokenizer->Encode("hi", true).size()));
}

TEST_F(RouterE2eTest, ConcurrentRequestsAllCompleteAndSpreadOverNodes) {
  FakeDecodeNode* d0 = AddDecode("decode-0");
  FakeDecodeNode* d1 = AddDecode("decode-1");
  AddPrefill("prefill-0");
  AddPrefill("prefill-1");
  constexpr int kRequests = 16;
  std::vector<GenerateResult> results(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([this, &results, i] { results[i] = Generate(Prompt("hi")); });
  }
  for (std::thread& t : threads) t.join();
  for (const GenerateResult& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.text(), "h\xc3\xa9!");
  }
  const size_t n0 = d0->observations().reserves.size();
  const size_t n1 = d1->observations().reserves.size();
  EXPECT_EQ(n0 + n1, static_cast<size_t>(kRequests));
  EXPECT_GT(n0, 0u);
  EXPECT_GT(n1, 0u);
  EXPECT_EQ(router_->state().num_queued(), 0);
}

TEST_F(RouterE2eTest, ShutdownCancelsStreamsStillRunningAfterTheGrace) {
  FakeDecodeNode* decode = AddDecode("decode-0");
  AddPrefill("prefill-0");
  DecodeScript script;
  script.events = {Event({ByteToken('a')})};
  script.hang_after_events = true;
  decode->SetScript(script);
  grpc::ClientContext context;
  auto reader = duet_->Generate(&context, Prompt("hi"));
  ASSERT_EQ(ReadUntilTokens(reader.get()).token_ids_size(), 1);
  server_->Shutdown(absl::Milliseconds(100));  // returns once every handler is done
  GenerateResponse message;
  while (reader->Read(&message)) {
  }
  EXPECT_FALSE(reader->Finish().ok());
  EXPECT_TRUE(decode->WaitFor([](const DecodeObservations& o) {
    return o.streams_cancelled == 1 && o.releases.size() == 1;
  }));
  router_->WaitForIdle();
}

TEST_F(RouterE2eTest, NodeRegistrationIsValidated) {
  EXPECT_EQ(RegisterNode("d", duet::v1::NODE_ROLE_DECODE, "127.0.0.1:1", 8, "other").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(RegisterNode("d", duet::v1::NODE_ROLE_UNSPECIFIED, "127.0.0.1:1").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(RegisterNode("d", duet::v1::NODE_ROLE_DECODE, "127.0.0.1:0").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(RegisterNode("d", duet::v1::NODE_ROLE_DECODE, "127.0.0.1:1", 0).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_FALSE(Heartbeat("d", 1));
  EXPECT_TRUE(RegisterNode("d", duet::v1::NODE_ROLE_DECODE, "127.0.0.1:1").ok());
  EXPECT_TRUE(Heartbeat("d", 1));
}

TEST_F(RouterE2eTest, TokenizeListModelsAndHealth) {
  duet::v1::TokenizeRequest request;
  request.set_text("h\xc3\xa9");
  duet::v1::TokenizeResponse response;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(duet_->Tokenize(&context, request, &response).ok());
  }
  const std::vector<int32_t> expected = TinyModel().tokenizer->Encode("h\xc3\xa9", true);
  EXPECT_THAT(response.token_ids(), ::testing::ElementsAreArray(expected));
  ASSERT_EQ(response.pieces_size(), response.token_ids_size());
  EXPECT_EQ(response.pieces(response.pieces_size() - 1), "\xa9");  // a byte, not a string

  request.set_model("nope");
  {
    grpc::ClientContext context;
    EXPECT_EQ(duet_->Tokenize(&context, request, &response).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }

  duet::v1::ListModelsResponse models;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(duet_->ListModels(&context, {}, &models).ok());
  }
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), "tiny");
  EXPECT_EQ(models.models(0).architecture(), "llama");
  EXPECT_EQ(models.models(0).context_length(), 512);
  EXPECT_EQ(models.models(0).vocab_size(), 260);
  EXPECT_GT(models.models(0).num_parameters(), 0);

  EXPECT_EQ(rpc::CheckHealth(channel_, "", absl::Seconds(5)).value_or(rpc::ServingStatus()),
            grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(
      rpc::CheckHealth(channel_, "duet.v1.Duet", absl::Seconds(5)).value_or(rpc::ServingStatus()),
      grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace duet::router
