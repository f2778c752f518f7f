#include "router/router_state.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/rpc/channel.h"
#include "common/rpc/status_convert.h"
#include "spdlog/spdlog.h"

namespace duet::router {
namespace {

uint64_t RandomSeed() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

}  // namespace

RouterState::RouterState(const ServedModel* model, RouterOptions options, const Clock* clock)
    : model_(model),
      options_(std::move(options)),
      clock_(clock),
      registry_(NodeRegistry::Options{.heartbeat_timeout = options_.heartbeat_timeout,
                                      .retry_after = options_.heartbeat_interval,
                                      .routing_policy = options_.routing_policy,
                                      .cache_overlap_weight = options_.cache_overlap_weight},
                clock),
      random_(RandomSeed()),
      id_prefix_(static_cast<uint32_t>(RandomSeed())) {}

absl::StatusOr<std::shared_ptr<grpc::Channel>> RouterState::Channel(const std::string& address) {
  absl::MutexLock lock(&channels_mu_);
  auto it = channels_.find(address);
  if (it != channels_.end()) return it->second;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      rpc::CreateChannel(address, options_.channel_options);
  if (!channel.ok()) return channel.status();
  channels_.emplace(address, *channel);
  return *channel;
}

absl::Status RouterState::TryAdmit() {
  absl::MutexLock lock(&queue_mu_);
  if (num_queued_ >= options_.max_queued_requests) {
    return rpc::WithRetryAfter(
        absl::ResourceExhaustedError(absl::StrCat(
            "the router's queue is full: ", num_queued_,
            " requests are waiting for their first token (router.max_queued_requests = ",
            options_.max_queued_requests, ")")),
        options_.heartbeat_interval);
  }
  ++num_queued_;
  return absl::OkStatus();
}

void RouterState::LeaveQueue() {
  absl::MutexLock lock(&queue_mu_);
  --num_queued_;
}

int64_t RouterState::num_inflight() const {
  absl::MutexLock lock(&inflight_mu_);
  return static_cast<int64_t>(inflight_.size());
}

int32_t RouterState::num_queued() const {
  absl::MutexLock lock(&queue_mu_);
  return num_queued_;
}

void RouterState::AddInflight(InflightCall* call) {
  absl::MutexLock lock(&inflight_mu_);
  inflight_.insert(call);
}

void RouterState::RemoveInflight(InflightCall* call) {
  absl::MutexLock lock(&inflight_mu_);
  inflight_.erase(call);
}

void RouterState::NodeLost(const LostNode& node) {
  spdlog::warn("{} node {} ({}) lost: {}", NodeRoleName(node.role), node.id.value(), node.address,
               node.reason);
  {
    absl::MutexLock lock(&inflight_mu_);
    for (InflightCall* call : inflight_) call->OnNodeLost(node);
  }
  // A restarted node may come back on another address; drop the old channel (calls that use it
  // keep their own reference).
  absl::MutexLock lock(&channels_mu_);
  channels_.erase(node.address);
}

void RouterState::SweepNodes() {
  for (const LostNode& node : registry_.ExpireSilentNodes()) NodeLost(node);
}

void RouterState::WorkerStarted() {
  absl::MutexLock lock(&workers_mu_);
  ++num_workers_;
}

void RouterState::WorkerExited() {
  absl::MutexLock lock(&workers_mu_);
  --num_workers_;
}

void RouterState::WaitForWorkers() {
  absl::MutexLock lock(&workers_mu_);
  workers_mu_.Await(absl::Condition(
      +[](int64_t* n) { return *n == 0; }, &num_workers_));
}

std::string RouterState::NextRequestId() {
  return absl::StrFormat("r-%08x%08x", id_prefix_, next_id_.fetch_add(1) + 1);
}

uint64_t RouterState::FreshSeed() {
  absl::MutexLock lock(&random_mu_);
  return random_();
}

}  // namespace duet::router
