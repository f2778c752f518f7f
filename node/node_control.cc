#include "node/node_control.h"

#include <grpcpp/client_context.h>
#include <spdlog/spdlog.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/rpc/channel.h"

namespace duet::node {

absl::StatusOr<std::unique_ptr<NodeControlClient>> NodeControlClient::Start(
    const std::string& router_address, v1::RegisterRequest registration,
    std::function<v1::NodeLoad()> load, absl::Duration heartbeat_interval, KvEventsFn kv_events) {
  if (heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("heartbeat interval must be > 0, got ",
                                                   absl::FormatDuration(heartbeat_interval)));
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(router_address);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<NodeControlClient>(
      new NodeControlClient(v1::NodeControl::NewStub(*channel), std::move(registration),
                            std::move(load), heartbeat_interval, std::move(kv_events)));
}

NodeControlClient::NodeControlClient(std::unique_ptr<v1::NodeControl::Stub> stub,
                                     v1::RegisterRequest registration,
                                     std::function<v1::NodeLoad()> load, absl::Duration interval,
                                     KvEventsFn kv_events)
    : stub_(std::move(stub)),
      registration_(std::move(registration)),
      load_(std::move(load)),
      kv_events_(std::move(kv_events)),
      interval_(interval) {
  thread_ = std::thread([this] { Loop(); });
}

NodeControlClient::~NodeControlClient() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    if (in_flight_ != nullptr) in_flight_->TryCancel();
  }
  thread_.join();
}

void NodeControlClient::SetDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  wake_ = true;
}

bool NodeControlClient::AwaitDrainingReported(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return draining_reported_ || router_gone_ || stop_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return draining_reported_;
}

bool NodeControlClient::registered() const {
  absl::MutexLock lock(&mu_);
  return registered_;
}

int64_t NodeControlClient::num_heartbeats() const {
  absl::MutexLock lock(&mu_);
  return num_heartbeats_;
}

grpc::Status NodeControlClient::Call(const std::function<grpc::Status(grpc::ClientContext*)>& rpc,
                                     absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return grpc::Status(grpc::StatusCode::CANCELLED, "stopping");
    in_flight_ = &context;
  }
  grpc::Status status = rpc(&context);
  absl::MutexLock lock(&mu_);
  in_flight_ = nullptr;
  return status;
}

void NodeControlClient::Loop() {
  const std::string& id = registration_.node_id();
  while (true) {
    bool registered, draining;
    absl::Duration interval;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      registered = registered_;
      draining = draining_;
      interval = interval_;
      wake_ = false;
    }
    if (!registered) {
      v1::RegisterResponse response;
      grpc::Status s =
          Call([&](grpc::ClientContext* c) { return stub_->Register(c, registration_, &response); },
               interval);
      if (s.ok()) {
        kv_snapshot_needed_ = true;  // the router knows nothing of this node's cache
        absl::MutexLock lock(&mu_);
        registered_ = true;
        if (response.heartbeat_interval_ms() > 0) {
          interval_ = absl::Milliseconds(response.heartbeat_interval_ms());
        }
        spdlog::info("node {}: registered with the router (heartbeat every {} ms)", id,
                     absl::ToInt64Milliseconds(interval_));
        continue;  // heartbeat at once: the router learns the load
      }
      spdlog::warn("node {}: Register failed: {}: {}", id, static_cast<int>(s.error_code()),
                   s.error_message());
    } else {
      v1::HeartbeatRequest request;
      request.set_node_id(id);
      *request.mutable_load() = load_();
      request.set_draining(draining);
      if (kv_events_) *request.mutable_kv_events() = kv_events_(kv_snapshot_needed_);
      v1::HeartbeatResponse response;
      grpc::Status s =
          Call([&](grpc::ClientContext* c) { return stub_->Heartbeat(c, request, &response); },
               interval);
      // Events of a heartbeat the router may not have applied are lost: send everything next.
      kv_snapshot_needed_ = !s.ok() || !response.known();
      absl::MutexLock lock(&mu_);
      if (s.ok()) {
        ++num_heartbeats_;
        if (draining && response.known()) draining_reported_ = true;
        if (!response.known()) {
          registered_ = false;
          spdlog::warn("node {}: the router does not know this node; registering again", id);
          continue;
        }
      } else if (stop_) {
        // Cancelled by the destructor: the node is stopping.
      } else if (s.error_code() == grpc::StatusCode::CANCELLED) {
        // The router's server cancels calls in flight when it shuts down.
        spdlog::info("node {}: heartbeat cancelled by the router (shutting down?)", id);
      } else if (draining && s.error_code() == grpc::StatusCode::UNAVAILABLE) {
        // The router is gone (a cluster stops it first): there is nobody to tell.
        if (!router_gone_) spdlog::info("node {}: router unreachable while draining", id);
        router_gone_ = true;
      } else {
        spdlog::warn("node {}: Heartbeat failed: {}: {}", id, static_cast<int>(s.error_code()),
                     s.error_message());
      }
    }
    absl::MutexLock lock(&mu_);
    auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || wake_; };
    mu_.AwaitWithTimeout(absl::Condition(&woken), interval_);
  }
}

}  // namespace duet::node
