#include "node/token_stream.h"

#include <utility>

#include "common/rpc/status_convert.h"

namespace duet::node {
namespace {

// A call that ends at once with a status.
class FailedReactor : public grpc::ServerWriteReactor<v1::TokenEvent> {
 public:
  explicit FailedReactor(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

TokenSink::TokenSink(int64_t num_prompt_tokens, int64_t cached_prompt_tokens)
    : num_prompt_tokens_(num_prompt_tokens), cached_prompt_tokens_(cached_prompt_tokens) {}

void TokenSink::set_cached_prompt_tokens(int64_t n) {
  absl::MutexLock lock(&mu_);
  cached_prompt_tokens_ = n;
}

void TokenSink::AddTokens(absl::Span<const int32_t> tokens,
                          absl::Span<const v1::TokenLogprobs> logprobs) {
  Action action;
  TokenStreamReactor* reactor = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (closing_) return;
    for (int32_t t : tokens) pending_.add_token_ids(t);
    for (const v1::TokenLogprobs& l : logprobs) *pending_.add_logprobs() = l;
    num_tokens_ += static_cast<int64_t>(tokens.size());
    action = Next(&reactor);
  }
  Run(action, reactor);
}

void TokenSink::Finish(v1::FinishReason reason) {
  Action action;
  TokenStreamReactor* reactor = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (closing_) return;
    final_reason_ = reason;
    Close(grpc::Status::OK, /*final_event=*/true);
    action = Next(&reactor);
  }
  Run(action, reactor);
}

void TokenSink::Preempt() {
  Action action;
  TokenStreamReactor* reactor = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (closing_) return;
    final_reason_ = v1::FINISH_REASON_UNSPECIFIED;
    preempted_ = true;
    Close(grpc::Status::OK, /*final_event=*/true);
    action = Next(&reactor);
  }
  Run(action, reactor);
}

void TokenSink::Fail(const absl::Status& status) {
  Action action;
  TokenStreamReactor* reactor = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (closing_) return;
    final_reason_ = v1::FINISH_REASON_ERROR;
    Close(rpc::ToGrpcStatus(status), /*final_event=*/num_tokens_ > 0);
    action = Next(&reactor);
  }
  Run(action, reactor);
}

bool TokenSink::finishing() const {
  absl::MutexLock lock(&mu_);
  return closing_;
}

bool TokenSink::attached() const {
  absl::MutexLock lock(&mu_);
  return attached_;
}

int64_t TokenSink::num_tokens() const {
  absl::MutexLock lock(&mu_);
  return num_tokens_;
}

absl::Status TokenSink::Attach(TokenStreamReactor* reactor) {
  Action action;
  TokenStreamReactor* target = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (attached_) {
      return absl::FailedPreconditionError("the request's token stream is already open");
    }
    attached_ = true;
    reactor_ = reactor;
    action = Next(&target);
  }
  Run(action, target);
  return absl::OkStatus();
}

void TokenSink::OnWriteDone(bool ok) {
  Action action;
  TokenStreamReactor* reactor = nullptr;
  {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!ok) {
      // The call is broken (cancelled or the connection died): nothing more can be written.
      pending_.Clear();
      final_event_pending_ = false;
      if (!closing_) Close(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"), false);
    }
    action = Next(&reactor);
  }
  Run(action, reactor);
}

bool TokenSink::OnCancelled() {
  Action action;
  TokenStreamReactor* reactor = nullptr;
  bool was_live;
  {
    absl::MutexLock lock(&mu_);
    was_live = !closing_;
    pending_.Clear();
    final_event_pending_ = false;
    if (!closing_) {
      Close(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"), false);
    }
    action = Next(&reactor);
  }
  Run(action, reactor);
  return was_live;
}

void TokenSink::Detach() {
  absl::MutexLock lock(&mu_);
  reactor_ = nullptr;
}

void TokenSink::Close(grpc::Status status, bool final_event) {
  closing_ = true;
  final_status_ = std::move(status);
  final_event_pending_ = final_event;
}

void TokenSink::AddUsage(v1::TokenEvent* event) const {
  v1::Usage* usage = event->mutable_usage();
  usage->set_prompt_tokens(num_prompt_tokens_);
  usage->set_completion_tokens(num_tokens_);
  usage->set_cached_prompt_tokens(cached_prompt_tokens_);
}

TokenSink::Action TokenSink::Next(TokenStreamReactor** reactor) {
  if (reactor_ == nullptr || write_in_flight_ || finish_sent_) return Action::kNone;
  *reactor = reactor_;
  if (final_event_pending_) {
    pending_.set_finish_reason(final_reason_);
    pending_.set_preempted(preempted_);
    AddUsage(&pending_);
    final_event_pending_ = false;
  }
  if (pending_.token_ids_size() > 0 || pending_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED ||
      pending_.preempted()) {
    writing_ = std::move(pending_);
    pending_.Clear();
    write_in_flight_ = true;
    return Action::kWrite;
  }
  if (closing_) {
    finish_sent_ = true;
    return Action::kFinish;
  }
  return Action::kNone;
}

void TokenSink::Run(Action action, TokenStreamReactor* reactor) {
  switch (action) {
    case Action::kNone:
      return;
    case Action::kWrite:
      // writing_ is not touched again until OnWriteDone.
      reactor->StartWrite(&writing_);
      return;
    case Action::kFinish: {
      grpc::Status status;
      {
        absl::MutexLock lock(&mu_);
        status = final_status_;
      }
      reactor->Finish(std::move(status));
      return;
    }
  }
}

grpc::ServerWriteReactor<v1::TokenEvent>* TokenStreamReactor::Start(
    std::shared_ptr<TokenSink> sink, std::function<void()> on_cancel) {
  auto* reactor = new TokenStreamReactor(std::move(sink), std::move(on_cancel));
  if (absl::Status s = reactor->sink_->Attach(reactor); !s.ok()) {
    delete reactor;
    return Failed(s);
  }
  return reactor;
}

grpc::ServerWriteReactor<v1::TokenEvent>* TokenStreamReactor::Failed(const absl::Status& status) {
  return new FailedReactor(rpc::ToGrpcStatus(status));
}

TokenStreamReactor::TokenStreamReactor(std::shared_ptr<TokenSink> sink,
                                       std::function<void()> on_cancel)
    : sink_(std::move(sink)), on_cancel_(std::move(on_cancel)) {}

void TokenStreamReactor::OnWriteDone(bool ok) { sink_->OnWriteDone(ok); }

void TokenStreamReactor::OnCancel() {
  if (sink_->OnCancelled() && on_cancel_) on_cancel_();
}

void TokenStreamReactor::OnDone() {
  sink_->Detach();
  delete this;
}

}  // namespace duet::node
