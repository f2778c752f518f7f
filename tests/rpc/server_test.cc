// A real server on 127.0.0.1:0 with a fake Duet service: health, reflection, the retry hint over
// the wire, shutdown of a hanging stream, and channel helpers.
#include "common/rpc/server.h"

#include <grpcpp/client_context.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/rpc/channel.h"
#include "common/rpc/status_convert.h"
#include "duet/v1/duet.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.pb.h"
#include "gtest/gtest.h"
#include "reflection_wire.pb.h"

namespace duet::rpc {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsSupersetOf;

constexpr absl::Duration kTimeout = absl::Seconds(5);  // never reached when things work

// Generate: two messages ("ab" then "c" with finish_reason), or, for the prompt "hang", nothing
// until the call is cancelled.
class GenerateReactor : public grpc::ServerWriteReactor<duet::v1::GenerateResponse> {
 public:
  GenerateReactor(const duet::v1::GenerateRequest& request, absl::Notification* hang_started) {
    if (request.text() == "hang") {
      hanging_ = true;
      hang_started->Notify();
      return;
    }
    duet::v1::GenerateResponse first;
    first.set_request_id(request.request_id());
    first.add_token_ids(1);
    first.add_token_ids(2);
    first.set_text("ab");
    duet::v1::GenerateResponse last;
    last.set_request_id(request.request_id());
    last.add_token_ids(3);
    last.set_text("c");
    last.set_finish_reason(duet::v1::FINISH_REASON_STOP);
    last.mutable_usage()->set_prompt_tokens(4);
    last.mutable_usage()->set_completion_tokens(3);
    responses_ = {first, last};
    WriteNext();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    WriteNext();
  }
  // Only a hanging call has nothing in flight that would otherwise end it.
  void OnCancel() override {
    if (hanging_) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while hanging"));
  }
  void OnDone() override { delete this; }

 private:
  void WriteNext() {
    if (next_ + 1 < responses_.size()) {
      StartWrite(&responses_[next_++]);
    } else {
      StartWriteAndFinish(&responses_[next_++], grpc::WriteOptions(), grpc::Status::OK);
    }
  }

  bool hanging_ = false;
  std::vector<duet::v1::GenerateResponse> responses_;
  size_t next_ = 0;
};

class FakeDuet final : public duet::v1::Duet::CallbackService {
 public:
  grpc::ServerWriteReactor<duet::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* /*context*/, const duet::v1::GenerateRequest* request) override {
    return new GenerateReactor(*request, &hang_started_);
  }

  // Always "busy": RESOURCE_EXHAUSTED with a 250 ms retry hint.
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const duet::v1::TokenizeRequest* /*request*/,
                                     duet::v1::TokenizeResponse* /*response*/) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(WithRetryAfter(
        absl::ResourceExhaustedError("tokenizer queue full"), absl::Milliseconds(250))));
    return reactor;
  }

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const duet::v1::ListModelsRequest* /*request*/,
                                       duet::v1::ListModelsResponse* response) override {
    duet::v1::ModelInfo* model = response->add_models();
    model->set_id("fake");
    model->set_architecture("llama");
    model->set_context_length(512);
    model->set_vocab_size(32);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  absl::Notification hang_started_;
};

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RpcServer>> server =
        RpcServer::Start(ServerOptions{.address = "127.0.0.1:0"}, {&fake_});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CreateChannel(server_->address());
    ASSERT_TRUE(channel.ok()) << channel.status();
    channel_ = *channel;
    ASSERT_TRUE(WaitForReady(channel_, kTimeout).ok());
  }

  ServingStatus Health(const std::string& service) {
    absl::StatusOr<ServingStatus> status = CheckHealth(channel_, service, kTimeout);
    EXPECT_TRUE(status.ok()) << status.status();
    return status.value_or(grpc::health::v1::HealthCheckResponse::UNKNOWN);
  }

  FakeDuet fake_;
  std::unique_ptr<RpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ServerTest, BindsPortZeroAndServes) {
  EXPECT_GT(server_->port(), 0);
  EXPECT_EQ(server_->address(), "127.0.0.1:" + std::to_string(server_->port()));
  EXPECT_THAT(server_->service_names(), IsSupersetOf({"duet.v1.Duet", "grpc.health.v1.Health",
                                                      "grpc.reflection.v1alpha.ServerReflection"}));

  std::unique_ptr<duet::v1::Duet::Stub> stub = duet::v1::Duet::NewStub(channel_);
  grpc::ClientContext list_context;
  duet::v1::ListModelsResponse models;
  ASSERT_TRUE(stub->ListModels(&list_context, {}, &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), "fake");

  grpc::ClientContext generate_context;
  duet::v1::GenerateRequest request;
  request.set_text("hello");
  request.set_request_id("r-1");
  std::unique_ptr<grpc::ClientReader<duet::v1::GenerateResponse>> reader =
      stub->Generate(&generate_context, request);
  std::vector<duet::v1::GenerateResponse> responses;
  duet::v1::GenerateResponse response;
  while (reader->Read(&response)) responses.push_back(response);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(responses[0].text() + responses[1].text(), "abc");
  EXPECT_EQ(responses[0].finish_reason(), duet::v1::FINISH_REASON_UNSPECIFIED);
  EXPECT_EQ(responses[1].finish_reason(), duet::v1::FINISH_REASON_STOP);
  EXPECT_EQ(responses[1].usage().completion_tokens(), 3);
  EXPECT_EQ(responses[1].request_id(), "r-1");
}

TEST_F(ServerTest, HealthStartsServingAndFollowsDrain) {
  using grpc::health::v1::HealthCheckResponse;
  EXPECT_EQ(Health(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("duet.v1.Duet"), HealthCheckResponse::SERVING);

  server_->SetServiceServing("duet.v1.Duet", false);
  EXPECT_EQ(Health("duet.v1.Duet"), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health(""), HealthCheckResponse::SERVING);

  server_->SetServing(false);  // drain
  EXPECT_EQ(Health(""), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health("grpc.health.v1.Health"), HealthCheckResponse::NOT_SERVING);
  server_->SetServing(true);
  EXPECT_EQ(Health(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("duet.v1.Duet"), HealthCheckResponse::SERVING);

  absl::StatusOr<ServingStatus> unknown = CheckHealth(channel_, "duet.v1.Nope", kTimeout);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("duet.v1.Nope"));
}

// One request, one response over grpc.reflection.v1alpha, with a generic stub.
class ReflectionCall : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ReflectionCall(std::shared_ptr<grpc::Channel> channel,
                 const duet::testing::ServerReflectionRequest& request)
      : stub_(std::move(channel)) {
    const std::string bytes = request.SerializeAsString();
    grpc::Slice slice(bytes);
    request_ = grpc::ByteBuffer(&slice, 1);
    context_.set_deadline(absl::ToChronoTime(absl::Now() + kTimeout));
    stub_.PrepareBidiStreamingCall(&context_,
                                   "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                   grpc::StubOptions(), this);
    StartWriteLast(&request_, grpc::WriteOptions());
    StartRead(&read_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    std::vector<grpc::Slice> slices;
    if (read_.Dump(&slices).ok()) {
      std::string bytes;
      for (const grpc::Slice& s : slices) {
        bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
      responses_.push_back(bytes);
    }
    StartRead(&read_);
  }
  void OnDone(const grpc::Status& status) override {
    status_ = status;
    done_.Notify();
  }

  // Waits for the call to end; returns its only response.
  absl::StatusOr<duet::testing::ServerReflectionResponse> Await() {
    done_.WaitForNotification();
    if (!status_.ok()) return FromGrpcStatus(status_);
    if (responses_.size() != 1) {
      return absl::InternalError("expected 1 response, got " + std::to_string(responses_.size()));
    }
    duet::testing::ServerReflectionResponse response;
    if (!response.ParseFromString(responses_[0])) return absl::DataLossError("bad response");
    return response;
  }

 private:
  grpc::GenericStub stub_;
  grpc::ClientContext context_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer read_;
  std::vector<std::string> responses_;
  grpc::Status status_;
  absl::Notification done_;
};

TEST_F(ServerTest, ReflectionListsAndDescribesDuet) {
  duet::testing::ServerReflectionRequest list;
  list.set_list_services("");
  ReflectionCall list_call(channel_, list);
  absl::StatusOr<duet::testing::ServerReflectionResponse> listed = list_call.Await();
  ASSERT_TRUE(listed.ok()) << listed.status();
  std::vector<std::string> names;
  for (const auto& service : listed->list_services_response().service()) {
    names.push_back(service.name());
  }
  EXPECT_THAT(names, IsSupersetOf({"duet.v1.Duet", "grpc.health.v1.Health"}));

  duet::testing::ServerReflectionRequest describe;
  describe.set_file_containing_symbol("duet.v1.Duet");
  ReflectionCall describe_call(channel_, describe);
  absl::StatusOr<duet::testing::ServerReflectionResponse> described = describe_call.Await();
  ASSERT_TRUE(described.ok()) << described.status();
  ASSERT_TRUE(described->has_file_descriptor_response())
      << described->error_response().error_message();
  std::vector<std::string> files;
  bool found_generate = false;
  for (const std::string& bytes : described->file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto file;
    ASSERT_TRUE(file.ParseFromString(bytes));
    files.push_back(file.name());
    for (const auto& service : file.service()) {
      for (const auto& method : service.method()) {
        if (service.name() == "Duet" && method.name() == "Generate") {
          found_generate = method.server_streaming() && !method.client_streaming();
        }
      }
    }
  }
  EXPECT_THAT(files, Contains("duet/v1/duet.proto"));
  EXPECT_TRUE(found_generate);
}

TEST_F(ServerTest, RetryHintCrossesTheWire) {
  std::unique_ptr<duet::v1::Duet::Stub> stub = duet::v1::Duet::NewStub(channel_);
  grpc::ClientContext context;
  duet::v1::TokenizeResponse response;
  const absl::Status status = FromGrpcStatus(stub->Tokenize(&context, {}, &response));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "tokenizer queue full");
  EXPECT_EQ(GetRetryAfter(status), absl::Milliseconds(250));
}

TEST_F(ServerTest, ShutdownCancelsHangingStreamsAfterGrace) {
  std::unique_ptr<duet::v1::Duet::Stub> stub = duet::v1::Duet::NewStub(channel_);
  grpc::ClientContext context;
  duet::v1::GenerateRequest request;
  request.set_text("hang");
  grpc::Status client_status;
  std::thread client([&] {
    std::unique_ptr<grpc::ClientReader<duet::v1::GenerateResponse>> reader =
        stub->Generate(&context, request);
    duet::v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    client_status = reader->Finish();
  });
  fake_.hang_started_.WaitForNotification();
  const absl::Time start = absl::Now();
  server_->Shutdown(absl::Milliseconds(50));
  client.join();
  EXPECT_LT(absl::Now() - start, kTimeout);
  EXPECT_FALSE(client_status.ok());
  server_->Shutdown(absl::Seconds(1));  // idempotent

  // A stopped server is UNAVAILABLE to health checks and never becomes ready.
  absl::StatusOr<ServingStatus> health = CheckHealth(channel_, "", kTimeout);
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable);
  absl::StatusOr<std::shared_ptr<grpc::Channel>> fresh = CreateChannel(server_->address());
  ASSERT_TRUE(fresh.ok());
  const absl::Status ready = WaitForReady(*fresh, absl::Milliseconds(100));
  EXPECT_EQ(ready.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(ready.message(), HasSubstr("not ready"));
}

TEST_F(ServerTest, PortInUseIsUnavailable) {
  absl::StatusOr<std::unique_ptr<RpcServer>> second =
      RpcServer::Start(ServerOptions{.address = server_->address()}, {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr(server_->address()));
}

TEST(RpcServerTest, RejectsBadArguments) {
  FakeDuet fake;
  absl::StatusOr<std::unique_ptr<RpcServer>> server =
      RpcServer::Start(ServerOptions{.address = "127.0.0.1"}, {&fake});
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  server = RpcServer::Start(ServerOptions{}, {nullptr});
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  server = RpcServer::Start(ServerOptions{}, {&fake, &fake});
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(server.status().message(), HasSubstr("twice"));
}

TEST(ChannelTest, ValidatesTargets) {
  EXPECT_EQ(CreateChannel("localhost").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateChannel("localhost:0").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CreateChannel("localhost:50051").ok());
  EXPECT_TRUE(CreateChannel("dns:///localhost:50051").ok());
  EXPECT_TRUE(CreateChannel("unix:/tmp/duet.sock").ok());
}

}  // namespace
}  // namespace duet::rpc
