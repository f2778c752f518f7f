// GenerateCall's reactor side: the client stream's write queue, cancellation and node tracking.
// The worker's flow is in generate_flow.cc.
#include "router/generate_call.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/rpc/status_convert.h"
#include "spdlog/spdlog.h"

namespace duet::router {
namespace {

std::chrono::system_clock::time_point RequestDeadline(grpc::CallbackServerContext* context,
                                                      absl::Duration default_deadline) {
  const std::chrono::system_clock::time_point client = context->deadline();
  if (client != std::chrono::system_clock::time_point::max()) return client;
  if (default_deadline <= absl::ZeroDuration()) return client;
  return absl::ToChronoTime(absl::Now() + default_deadline);
}

bool SameNode(const NodeAssignment& a, const NodeId& id, uint64_t incarnation) {
  return a.id == id && a.incarnation == incarnation;
}

}  // namespace

GenerateCall* GenerateCall::Start(RouterState* state, grpc::CallbackServerContext* context,
                                  const duet::v1::GenerateRequest& request) {
  auto* call = new GenerateCall(state, context, request);
  state->WorkerStarted();
  std::thread([call] { call->Run(); }).detach();
  return call;
}

GenerateCall::GenerateCall(RouterState* state, grpc::CallbackServerContext* context,
                           const duet::v1::GenerateRequest& request)
    : state_(state),
      request_(request),
      request_id_(state->NextRequestId()),
      deadline_(RequestDeadline(context, state->options().default_deadline)) {}

void GenerateCall::Unref() {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

void GenerateCall::OnDone() { Unref(); }

void GenerateCall::OnCancel() {
  absl::MutexLock lock(&mu_);
  CancelLocked("the client cancelled the call");
}

void GenerateCall::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  write_in_flight_ = false;
  if (!writes_.empty()) writes_.pop_front();
  if (!ok) CancelLocked("a write to the client failed (the client went away)");
  if (cancelled_) writes_.clear();
  if (!writes_.empty()) {
    write_in_flight_ = true;
    StartWrite(&writes_.front());
  } else if (finish_.has_value() && !finished_) {
    finished_ = true;
    Finish(*finish_);
  }
}

void GenerateCall::CancelLocked(std::string_view why) {
  if (cancelled_) return;
  cancelled_ = true;
  spdlog::debug("{}: {}; cancelling {} node call(s)", request_id_, std::string(why),
                tracked_.size());
  for (auto& [context, node] : tracked_) context->TryCancel();
}

void GenerateCall::OnNodeLost(const LostNode& node) {
  absl::MutexLock lock(&mu_);
  bool used = false;
  for (auto& [context, assigned] : tracked_) {
    if (!SameNode(assigned, node.id, node.incarnation)) continue;
    used = true;
    context->TryCancel();
  }
  if (used) lost_.push_back(node);
}

void GenerateCall::Track(grpc::ClientContext* context, const NodeAssignment& node) {
  if (deadline_ != std::chrono::system_clock::time_point::max()) context->set_deadline(deadline_);
  {
    absl::MutexLock lock(&mu_);
    tracked_.emplace_back(context, node);
    if (cancelled_) context->TryCancel();
  }
  // After the context is visible to OnNodeLost: a node removed before that is caught here.
  if (state_->registry().IsLive(node.id, node.incarnation)) return;
  absl::MutexLock lock(&mu_);
  context->TryCancel();
  LostNode lost;
  lost.id = node.id;
  lost.role = node.role;
  lost.address = node.address;
  lost.incarnation = node.incarnation;
  lost.reason = "it stopped sending heartbeats or registered again";
  lost_.push_back(std::move(lost));
}

void GenerateCall::Untrack(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  for (auto it = tracked_.begin(); it != tracked_.end(); ++it) {
    if (it->first == context) {
      tracked_.erase(it);
      return;
    }
  }
}

bool GenerateCall::client_cancelled() {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

std::optional<std::string> GenerateCall::LostReason(const NodeAssignment& node) {
  absl::MutexLock lock(&mu_);
  for (const LostNode& lost : lost_) {
    if (SameNode(node, lost.id, lost.incarnation)) return lost.reason;
  }
  return std::nullopt;
}

bool GenerateCall::Send(duet::v1::GenerateResponse message) {
  absl::MutexLock lock(&mu_);
  auto can_send = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return cancelled_ || writes_.size() < kMaxPendingWrites;
  };
  mu_.Await(absl::Condition(&can_send));
  if (cancelled_ || finish_.has_value()) return false;
  writes_.push_back(std::move(message));
  if (!write_in_flight_) {
    write_in_flight_ = true;
    StartWrite(&writes_.front());
  }
  return true;
}

void GenerateCall::End(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (finish_.has_value()) return;
  finish_ = rpc::ToGrpcStatus(status);
  if (cancelled_) writes_.clear();
  // With a write in flight, OnWriteDone finishes once the queue is written (or dropped).
  if (!write_in_flight_) {
    finished_ = true;
    Finish(*finish_);
  }
}

}  // namespace duet::router
