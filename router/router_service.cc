#include "router/router_service.h"

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/rpc/address.h"
#include "common/rpc/status_convert.h"
#include "duet/v1/duet.grpc.pb.h"
#include "duet/v1/internal.grpc.pb.h"
#include "router/generate_call.h"
#include "router/validate.h"
#include "spdlog/spdlog.h"

namespace duet::router {
namespace {

duet::v1::NodeRole RoleToProto(NodeRole role) {
  switch (role) {
    case NodeRole::kPrefill:
      return duet::v1::NODE_ROLE_PREFILL;
    case NodeRole::kDecode:
      return duet::v1::NODE_ROLE_DECODE;
    case NodeRole::kColocated:
      return duet::v1::NODE_ROLE_COLOCATED;
  }
  return duet::v1::NODE_ROLE_UNSPECIFIED;
}

absl::StatusOr<NodeRole> RoleFromProto(duet::v1::NodeRole role) {
  switch (role) {
    case duet::v1::NODE_ROLE_PREFILL:
      return NodeRole::kPrefill;
    case duet::v1::NODE_ROLE_DECODE:
      return NodeRole::kDecode;
    case duet::v1::NODE_ROLE_COLOCATED:
      return NodeRole::kColocated;
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("role must be NODE_ROLE_PREFILL, NODE_ROLE_DECODE or NODE_ROLE_COLOCATED, got ",
                   static_cast<int>(role)));
}

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(rpc::ToGrpcStatus(status));
  return reactor;
}

}  // namespace

class Router::DuetServiceImpl final : public duet::v1::Duet::CallbackService {
 public:
  explicit DuetServiceImpl(Router* router) : router_(router) {}

  grpc::ServerWriteReactor<duet::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const duet::v1::GenerateRequest* request) override {
    return GenerateCall::Start(&router_->state_, context, *request);
  }

  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const duet::v1::TokenizeRequest* request,
                                     duet::v1::TokenizeResponse* response) override {
    return Answer(context, router_->Tokenize(*request, response));
  }

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const duet::v1::ListModelsRequest* /*request*/,
                                       duet::v1::ListModelsResponse* response) override {
    router_->ListModels(response);
    return Answer(context, absl::OkStatus());
  }

 private:
  Router* const router_;
};

class Router::NodeControlImpl final : public duet::v1::NodeControl::CallbackService {
 public:
  explicit NodeControlImpl(Router* router) : router_(router) {}

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const duet::v1::RegisterRequest* request,
                                     duet::v1::RegisterResponse* response) override {
    return Answer(context, router_->Register(*request, response));
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const duet::v1::HeartbeatRequest* request,
                                      duet::v1::HeartbeatResponse* response) override {
    router_->Heartbeat(*request, response);
    return Answer(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* ListNodes(grpc::CallbackServerContext* context,
                                      const duet::v1::ListNodesRequest* /*request*/,
                                      duet::v1::ListNodesResponse* response) override {
    router_->ListNodes(response);
    return Answer(context, absl::OkStatus());
  }

 private:
  Router* const router_;
};

Router::Router(const ServedModel* model, RouterOptions options, const Clock* clock)
    : state_(model, std::move(options), clock),
      duet_service_(std::make_unique<DuetServiceImpl>(this)),
      node_control_(std::make_unique<NodeControlImpl>(this)) {
  if (state_.options().sweep_interval > absl::ZeroDuration()) {
    sweeper_ = std::thread([this] { SweepLoop(); });
  }
}

Router::~Router() {
  StopSweeper();
  WaitForIdle();
}

std::vector<grpc::Service*> Router::services() {
  return {duet_service_.get(), node_control_.get()};
}

void Router::StopSweeper() {
  {
    absl::MutexLock lock(&sweeper_mu_);
    stop_sweeper_ = true;
  }
  if (sweeper_.joinable()) sweeper_.join();
}

void Router::SweepLoop() {
  absl::MutexLock lock(&sweeper_mu_);
  while (!sweeper_mu_.AwaitWithTimeout(absl::Condition(&stop_sweeper_),
                                       state_.options().sweep_interval)) {
    sweeper_mu_.Unlock();
    state_.SweepNodes();
    sweeper_mu_.Lock();
  }
}

absl::Status Router::Tokenize(const duet::v1::TokenizeRequest& request,
                              duet::v1::TokenizeResponse* response) const {
  const ServedModel& model = state_.model();
  DUET_RETURN_IF_ERROR(CheckModel(request.model(), model.id));
  std::optional<bool> add_bos;
  if (request.has_add_bos()) add_bos = request.add_bos();
  DUET_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                        TokenizeText(*model.tokenizer, request.text(), add_bos));
  for (int32_t id : ids) {
    response->add_token_ids(id);
    response->add_pieces(model.tokenizer->TokenToPiece(id));
  }
  return absl::OkStatus();
}

void Router::ListModels(duet::v1::ListModelsResponse* response) const {
  *response->add_models() = state_.model().info();
}

absl::Status Router::Register(const duet::v1::RegisterRequest& request,
                              duet::v1::RegisterResponse* response) {
  DUET_ASSIGN_OR_RETURN(NodeRole role, RoleFromProto(request.role()));
  const std::string& served = state_.model().id;
  if (!request.model_id().empty() && request.model_id() != served) {
    return absl::FailedPreconditionError(absl::StrCat("node '", request.node_id(),
                                                      "' serves model '", request.model_id(),
                                                      "' but this router serves '", served, "'"));
  }
  absl::StatusOr<rpc::HostPort> host_port = rpc::ParseHostPort(request.address());
  if (!host_port.ok() || host_port->port == 0) {
    return absl::InvalidArgumentError(absl::StrCat("node '", request.node_id(),
                                                   "': address must be a dialable host:port, "
                                                   "got '",
                                                   request.address(), "'"));
  }
  NodeSpec spec;
  spec.id = NodeId(request.node_id());
  spec.role = role;
  spec.address = request.address();
  spec.model_id = request.model_id();
  spec.total_kv_blocks = request.total_kv_blocks();
  spec.block_size = request.block_size();
  DUET_ASSIGN_OR_RETURN(RegisterResult result, state_.registry().Register(spec));
  if (result.replaced.has_value()) state_.NodeLost(*result.replaced);
  spdlog::info("registered {} node {} at {} ({} KV blocks of {} tokens)", NodeRoleName(role),
               request.node_id(), request.address(), request.total_kv_blocks(),
               request.block_size());
  response->set_heartbeat_interval_ms(
      absl::ToInt64Milliseconds(state_.options().heartbeat_interval));
  return absl::OkStatus();
}

void Router::Heartbeat(const duet::v1::HeartbeatRequest& request,
                       duet::v1::HeartbeatResponse* response) {
  const duet::v1::NodeLoad& load = request.load();
  NodeLoadReport report;
  report.queued_prefill_tokens = load.queued_prefill_tokens();
  report.running_sequences = load.running_sequences();
  report.waiting_sequences = load.waiting_sequences();
  report.free_kv_blocks = load.free_kv_blocks();
  report.total_kv_blocks = load.total_kv_blocks();
  report.active_requests = load.active_requests();
  KvEventsReport events;
  events.snapshot = request.kv_events().snapshot();
  events.stored.assign(request.kv_events().stored().begin(), request.kv_events().stored().end());
  events.removed.assign(request.kv_events().removed().begin(),
                        request.kv_events().removed().end());
  const bool known = state_.registry().Heartbeat(NodeId(request.node_id()), report,
                                                 request.draining(), events);
  if (!known)
    spdlog::info("heartbeat from unknown node {}: asking it to register", request.node_id());
  response->set_known(known);
}

}  // namespace duet::router

namespace duet::router {

void Router::ListNodes(duet::v1::ListNodesResponse* response) const {
  for (const NodeSnapshot& node : state_.registry().Snapshot()) {
    duet::v1::NodeInfo* info = response->add_nodes();
    info->set_node_id(node.spec.id.value());
    info->set_role(RoleToProto(node.spec.role));
    info->set_address(node.spec.address);
    info->set_model_id(node.spec.model_id);
    info->set_live(node.live);
    info->set_draining(node.draining);
    info->set_block_size(node.spec.block_size);
    info->set_num_cached_blocks(node.num_cached_blocks);
    duet::v1::NodeLoad* load = info->mutable_load();
    load->set_queued_prefill_tokens(node.reported.queued_prefill_tokens);
    load->set_running_sequences(node.reported.running_sequences);
    load->set_waiting_sequences(node.reported.waiting_sequences);
    load->set_free_kv_blocks(node.reported.free_kv_blocks);
    load->set_total_kv_blocks(node.reported.total_kv_blocks > 0 ? node.reported.total_kv_blocks
                                                                : node.spec.total_kv_blocks);
    load->set_active_requests(node.reported.active_requests);
  }
}

}  // namespace duet::router
