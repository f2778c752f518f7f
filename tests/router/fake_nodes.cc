#include "tests/router/fake_nodes.h"

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace duet::router::testing {

using duet::v1::TokenEvent;

// One StreamTokens or Run call: writes the script's events one at a time, then finishes (or
// hangs until cancelled). All state is guarded by the node's mutex.
class FakeDecodeNode::Stream final : public grpc::ServerWriteReactor<TokenEvent> {
 public:
  Stream(FakeDecodeNode* node, DecodeScript script, std::string reservation_id)
      : node_(node), script_(std::move(script)), reservation_id_(std::move(reservation_id)) {}

  void BeginLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(node_->mu_) {
    started_ = true;
    NextLocked();
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(node_->mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&node_->mu_);
    write_in_flight_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    NextLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&node_->mu_);
    ++node_->observed_.streams_cancelled;
    cancelled_ = true;
    if (!write_in_flight_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&node_->mu_);
      ++node_->observed_.streams_finished;
      auto it = node_->reservations_.find(reservation_id_);
      if (it != node_->reservations_.end() && it->second.stream == this)
        it->second.stream = nullptr;
    }
    delete this;
  }

 private:
  void NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(node_->mu_) {
    if (finished_ || !started_) return;
    if (cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      return;
    }
    if (next_ < script_.events.size()) {
      write_in_flight_ = true;
      StartWrite(&script_.events[next_++]);
      return;
    }
    if (script_.hang_after_events) return;  // until OnCancel
    FinishLocked(script_.final_status);
  }

  FakeDecodeNode* const node_;
  DecodeScript script_;
  const std::string reservation_id_;
  size_t next_ = 0;
  bool started_ = false;
  bool write_in_flight_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
};

FakeDecodeNode::~FakeDecodeNode() { Stop(); }

absl::Status FakeDecodeNode::Start() {
  absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
      rpc::RpcServer::Start({.address = "127.0.0.1:0"}, {this});
  if (!server.ok()) return server.status();
  server_ = std::move(*server);
  address_ = server_->address();
  return absl::OkStatus();
}

void FakeDecodeNode::Stop() {
  if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
}

void FakeDecodeNode::SetScript(DecodeScript script) {
  absl::MutexLock lock(&mu_);
  script_ = std::move(script);
}

void FakeDecodeNode::SetReserveError(grpc::Status status) {
  absl::MutexLock lock(&mu_);
  reserve_error_ = std::move(status);
}

bool FakeDecodeNode::Push(const std::string& reservation_id) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(reservation_id);
  if (it == reservations_.end()) return false;
  it->second.pushed = true;
  if (it->second.stream != nullptr) it->second.stream->BeginLocked();
  return true;
}

bool FakeDecodeNode::WaitFor(const std::function<bool(const DecodeObservations&)>& done,
                             absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done(observed_); };
  return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
}

DecodeObservations FakeDecodeNode::observations() {
  absl::MutexLock lock(&mu_);
  return observed_;
}

grpc::ServerUnaryReactor* FakeDecodeNode::Reserve(grpc::CallbackServerContext* context,
                                                  const duet::v1::ReserveRequest* request,
                                                  duet::v1::ReserveResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::MutexLock lock(&mu_);
  observed_.reserves.push_back(*request);
  observed_.reserve_deadlines.push_back(context->deadline());
  if (!reserve_error_.ok()) {
    reactor->Finish(reserve_error_);
    return reactor;
  }
  const std::string id = absl::StrCat("res-", next_reservation_++);
  reservations_[id] = Reservation{};
  response->set_reservation_id(id);
  response->set_block_size(16);
  response->set_num_blocks(static_cast<int32_t>((request->num_prompt_tokens() + 15) / 16));
  response->set_kv_dtype(duet::v1::KV_DTYPE_F32);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<TokenEvent>* FakeDecodeNode::StreamTokens(
    grpc::CallbackServerContext* /*context*/, const duet::v1::StreamTokensRequest* request) {
  absl::MutexLock lock(&mu_);
  observed_.streams.push_back(*request);
  auto it = reservations_.find(request->reservation_id());
  if (it == reservations_.end()) {
    DecodeScript missing;
    missing.final_status = grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown reservation");
    auto* stream = new Stream(this, std::move(missing), "");
    stream->BeginLocked();
    return stream;
  }
  auto* stream = new Stream(this, script_, request->reservation_id());
  it->second.stream = stream;
  if (it->second.pushed) stream->BeginLocked();
  return stream;
}

grpc::ServerUnaryReactor* FakeDecodeNode::Release(grpc::CallbackServerContext* context,
                                                  const duet::v1::ReleaseRequest* request,
                                                  duet::v1::ReleaseResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::MutexLock lock(&mu_);
  observed_.releases.push_back(*request);
  response->set_released(reservations_.erase(request->reservation_id()) > 0);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<TokenEvent>* FakeDecodeNode::Run(grpc::CallbackServerContext* /*context*/,
                                                          const duet::v1::RunRequest* request) {
  absl::MutexLock lock(&mu_);
  observed_.runs.push_back(*request);
  auto* stream = new Stream(this, script_, "");
  stream->BeginLocked();
  return stream;
}

// A Prefill call that answers only when cancelled.
class FakePrefillNode::Hang final : public grpc::ServerUnaryReactor {
 public:
  explicit Hang(FakePrefillNode* node) : node_(node) {}
  void OnCancel() override {
    {
      absl::MutexLock lock(&node_->mu_);
      ++node_->observed_.cancelled;
    }
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }
  void OnDone() override { delete this; }

 private:
  FakePrefillNode* const node_;
};

FakePrefillNode::~FakePrefillNode() { Stop(); }

absl::Status FakePrefillNode::Start() {
  absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
      rpc::RpcServer::Start({.address = "127.0.0.1:0"}, {this});
  if (!server.ok()) return server.status();
  server_ = std::move(*server);
  address_ = server_->address();
  return absl::OkStatus();
}

void FakePrefillNode::Stop() {
  if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
}

void FakePrefillNode::SetBehavior(PrefillBehavior behavior, grpc::Status error) {
  absl::MutexLock lock(&mu_);
  behavior_ = behavior;
  error_ = std::move(error);
}

void FakePrefillNode::SetCachedPromptTokens(int64_t n) {
  absl::MutexLock lock(&mu_);
  cached_prompt_tokens_ = n;
}

bool FakePrefillNode::WaitFor(const std::function<bool(const PrefillObservations&)>& done,
                              absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done(observed_); };
  return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
}

PrefillObservations FakePrefillNode::observations() {
  absl::MutexLock lock(&mu_);
  return observed_;
}

grpc::ServerUnaryReactor* FakePrefillNode::Prefill(grpc::CallbackServerContext* context,
                                                   const duet::v1::PrefillRequest* request,
                                                   duet::v1::PrefillResponse* response) {
  PrefillBehavior behavior;
  grpc::Status error;
  int64_t cached = 0;
  {
    absl::MutexLock lock(&mu_);
    observed_.prefills.push_back(*request);
    behavior = behavior_;
    error = error_;
    cached = cached_prompt_tokens_;
  }
  if (behavior == PrefillBehavior::kHang) return new Hang(this);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (behavior == PrefillBehavior::kFail) {
    reactor->Finish(error);
    return reactor;
  }
  FakeDecodeNode* decode = lookup_(request->decode_address());
  if (decode == nullptr || !decode->Push(request->reservation_id())) {
    reactor->Finish(grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        "no reservation " + request->reservation_id() + " at " + request->decode_address()));
    return reactor;
  }
  response->set_num_prompt_tokens(request->token_ids_size());
  response->set_cached_prompt_tokens(cached);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace duet::router::testing
