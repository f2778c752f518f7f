// GenerateCall's worker: runs one request through the cluster (see generate_call.h).
#include <grpcpp/client_context.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/base/request_log.h"
#include "common/base/status.h"
#include "common/kv/block_hash.h"
#include "common/rpc/finish_reason.h"
#include "common/rpc/status_convert.h"
#include "router/generate_call.h"
#include "spdlog/spdlog.h"

namespace duet::router {
namespace {

using duet::v1::DecodeService;
using duet::v1::GenerateResponse;
using duet::v1::PrefillService;
using duet::v1::TokenEvent;

std::string NodeName(const NodeAssignment& node) {
  return absl::StrCat(NodeRoleName(node.role), " node ", node.id.value(), " (", node.address, ")");
}

// Failures a different node may not have.
bool RetriableCode(grpc::StatusCode code) {
  return code != grpc::StatusCode::INVALID_ARGUMENT &&
         code != grpc::StatusCode::DEADLINE_EXCEEDED && code != grpc::StatusCode::OUT_OF_RANGE;
}

// The client's status for a failed node call. Before any token was streamed: the node's own
// code where it describes the request (bad argument, deadline, cluster full, model mismatch),
// else UNAVAILABLE (retriable). Mid-stream: UNAVAILABLE (or DEADLINE_EXCEEDED). The message
// names the node and what failed; payloads (a retry hint) are kept.
absl::Status NodeFailure(const NodeAssignment& node, std::string_view what,
                         const grpc::Status& status, bool mid_stream = false) {
  const absl::Status from_node = rpc::FromGrpcStatus(status);
  absl::StatusCode code = absl::StatusCode::kUnavailable;
  switch (status.error_code()) {
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      code = from_node.code();
      break;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
      if (!mid_stream) code = from_node.code();
      break;
    default:
      break;
  }
  absl::Status out(code, absl::StrCat(NodeName(node), " ", std::string(what), ": ",
                                      absl::StatusCodeToString(from_node.code()), ": ",
                                      std::string(from_node.message())));
  from_node.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

absl::Status NodeLostStatus(const NodeAssignment& node, const std::string& reason) {
  return absl::UnavailableError(absl::StrCat(NodeName(node), " was lost: ", reason));
}

}  // namespace

void GenerateCall::Run() {
  started_ = absl::Now();
  state_->AddInflight(this);
  absl::Status status = Execute();
  LeaveQueue();
  const std::string& echoed_id = client_request_id_.empty() ? request_id_ : client_request_id_;
  if (status.ok()) {
    final_.set_request_id(echoed_id);
    duet::v1::Usage* usage = final_.mutable_usage();
    usage->set_prompt_tokens(static_cast<int64_t>(resolved_->prompt.size()));
    usage->set_completion_tokens(relay_->num_tokens());
    usage->set_cached_prompt_tokens(cached_prompt_tokens_);
    if (!Send(std::move(final_))) status = absl::CancelledError("the client cancelled the call");
  } else if (relay_.has_value() && relay_->num_tokens() > 0 && !client_cancelled()) {
    // Tokens already streamed stay valid; the last message says the request failed.
    GenerateResponse last;
    last.set_request_id(echoed_id);
    last.set_finish_reason(duet::v1::FINISH_REASON_ERROR);
    last.mutable_usage()->set_prompt_tokens(static_cast<int64_t>(resolved_->prompt.size()));
    last.mutable_usage()->set_completion_tokens(relay_->num_tokens());
    Send(std::move(last));
  }
  if (RouterMetrics* m = state_->metrics(); m != nullptr && resolved_.has_value()) {
    const absl::Time now = absl::Now();
    std::string reason = status.ok() ? rpc::FinishReasonName(relay_->finish_reason())
                         : status.code() == absl::StatusCode::kCancelled ? "cancelled"
                                                                         : "error";
    m->Finished(absl::ToDoubleSeconds(now - started_),
                first_token_at_ == absl::InfinitePast()
                    ? -1.0
                    : absl::ToDoubleSeconds(now - first_token_at_),
                reason, static_cast<int64_t>(resolved_->prompt.size()),
                relay_.has_value() ? relay_->num_tokens() : 0);
  }
  const double e2e_ms = absl::ToDoubleMilliseconds(absl::Now() - started_);
  if (status.ok()) {
    LogRequestEvent(request_id_, "finished",
                    absl::StrCat("reason=", rpc::FinishReasonName(relay_->finish_reason()),
                                 " tokens=", relay_->num_tokens(), " e2e_ms=", e2e_ms));
  } else {
    LogRequestEvent(request_id_, "failed",
                    absl::StrCat("status=", absl::StatusCodeToString(status.code()),
                                 " tokens=", relay_.has_value() ? relay_->num_tokens() : 0,
                                 " e2e_ms=", e2e_ms, " reason=\"", status.message(), "\""));
  }
  state_->RemoveInflight(this);
  End(status);
  state_->WorkerExited();
  Unref();
}

void GenerateCall::LeaveQueue() {
  if (!queued_) return;
  queued_ = false;
  state_->LeaveQueue();
}

void GenerateCall::SendHeaderOnce() {
  if (header_sent_) return;
  header_sent_ = true;
  if (RouterMetrics* m = state_->metrics()) {
    m->ObserveQueueTime(absl::ToDoubleSeconds(absl::Now() - started_));
  }
  GenerateResponse header;
  header.set_request_id(client_request_id_.empty() ? request_id_ : client_request_id_);
  Send(std::move(header));
}

absl::Status GenerateCall::Execute() {
  const ServedModel& model = state_->model();
  client_request_id_ = request_.request_id();
  ResolveOptions resolve_options;
  resolve_options.default_max_tokens = state_->options().default_max_tokens;
  resolve_options.speculation_default_on = state_->options().speculation_default_on;
  resolve_options.fresh_seed = state_->FreshSeed();
  DUET_ASSIGN_OR_RETURN(resolved_, ResolveGenerateRequest(request_, model.view(), resolve_options));
  DUET_RETURN_IF_ERROR(state_->TryAdmit());
  queued_ = true;
  LogRequestEvent(request_id_, "received",
                  absl::StrCat("prompt_tokens=", resolved_->prompt.size(), " max_tokens=",
                               resolved_->sampling.max_tokens(),
                               client_request_id_.empty() ? "" : " client_id=",
                               client_request_id_));
  relay_.emplace(*model.tokenizer, model.config.vocab_size, resolved_->sampling);
  PickOptions decode_pick;
  PickOptions prefill_pick;
  absl::Status failure;  // of the previous attempt
  // While the cluster is full (no decode node has the blocks, or the picked one refused the
  // reservation for lack of blocks or sequence slots), the request waits in the queue and
  // tries again, up to max_queue_wait.
  const absl::Time wait_until = absl::Now() + state_->options().max_queue_wait;
  absl::Duration backoff = absl::Milliseconds(5);
  // Each preemption costs a re-prefill; a request preempted this often is not making progress.
  constexpr int kMaxResumes = 16;
  int resumes = 0;
  for (int attempt = 0;; ++attempt) {
    if (client_cancelled()) return absl::CancelledError("the client cancelled the call");
    const int64_t num_prompt = static_cast<int64_t>(resolved_->prompt.size()) + num_resumed_;
    decode_pick.colocated_only = !state_->registry().HasLivePrefill();
    absl::StatusOr<NodeAssignment> decode = state_->registry().PickDecode(num_prompt, decode_pick);
    if (!decode.ok()) {
      const bool refused_full = failure.code() == absl::StatusCode::kResourceExhausted;
      const bool full =
          decode.status().code() == absl::StatusCode::kResourceExhausted || refused_full;
      if (full && WaitForCapacity(wait_until, &backoff)) {
        decode_pick.exclude.clear();
        --attempt;
        continue;
      }
      // On a retry, "no other node" says less than what failed.
      return attempt == 0 && !refused_full ? decode.status() : failure;
    }
    spdlog::debug("{}: attempt {} on {}", request_id_, attempt + 1, NodeName(*decode));
    preempted_ = false;
    Attempt result = decode->role == NodeRole::kColocated ? RunColocated(*decode)
                                                          : RunDisaggregated(*decode, prefill_pick);
    if (result.preempted && !client_cancelled()) {
      if (++resumes > kMaxResumes) {
        return absl::UnavailableError(absl::StrCat("the request was preempted ", kMaxResumes,
                                                   " times (the decode nodes' KV pools are too "
                                                   "small for the load); giving up"));
      }
      // Resume: prefill the prompt plus everything streamed so far, then decode on.
      LogRequestEvent(request_id_, "preempted",
                      absl::StrCat("node=", decode->id.value(), " tokens=", generated_.size(),
                                   " action=resume"));
      num_resumed_ = static_cast<int64_t>(generated_.size());
      decode_pick.exclude.clear();
      --attempt;
      continue;
    }
    // Tokens streamed by this attempt (a resumed one starts with num_resumed_ of them).
    const bool streamed = static_cast<int64_t>(generated_.size()) > num_resumed_;
    if (result.status.code() == absl::StatusCode::kResourceExhausted && !streamed &&
        !client_cancelled()) {
      // The node was full: another node may have room now; otherwise wait (above).
      if (result.exclude_decode) decode_pick.exclude.push_back(*result.exclude_decode);
      failure = result.status;
      --attempt;
      continue;
    }
    if (result.status.ok() || !result.retriable || attempt >= 1 || streamed ||
        client_cancelled()) {
      return result.status;
    }
    failure = result.status;
    spdlog::info("{}: retrying on other nodes after: {}", request_id_, result.status.ToString());
    if (result.exclude_decode) decode_pick.exclude.push_back(*result.exclude_decode);
    if (result.exclude_prefill) {
      prefill_pick.exclude.push_back(*result.exclude_prefill);
      // Without another prefill node the retry cannot help: report the failure itself.
      if (!state_->registry().HasLivePrefill(prefill_pick.exclude)) return result.status;
    }
  }
}

bool GenerateCall::WaitForCapacity(absl::Time wait_until, absl::Duration* backoff) {
  const absl::Time now = absl::Now();
  absl::Time until = std::min(wait_until, now + *backoff);
  if (deadline_ != std::chrono::system_clock::time_point::max()) {
    until = std::min(until, absl::FromChrono(deadline_));
  }
  if (until <= now || now + *backoff > wait_until) return false;
  while (absl::Now() < until) {
    if (client_cancelled()) return false;
    absl::SleepFor(std::min(absl::Milliseconds(5), until - absl::Now()));
  }
  *backoff = std::min(*backoff * 2, absl::Milliseconds(100));
  return !client_cancelled();
}

std::vector<int32_t> GenerateCall::AttemptTokens() const {
  std::vector<int32_t> tokens = resolved_->prompt;
  tokens.insert(tokens.end(), generated_.begin(), generated_.begin() + num_resumed_);
  return tokens;
}

GenerateCall::Attempt GenerateCall::RunDisaggregated(const NodeAssignment& decode,
                                                     const PickOptions& prefill_pick) {
  Attempt result;
  const ServedModel& model = state_->model();
  const std::vector<int32_t> tokens = AttemptTokens();
  const int64_t num_prompt = static_cast<int64_t>(tokens.size());
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = state_->Channel(decode.address);
  if (!channel.ok()) {
    state_->registry().CancelAssignment(decode);
    result.status = absl::UnavailableError(
        absl::StrCat(NodeName(decode), " cannot be dialed: ", channel.status().message()));
    result.retriable = true;
    result.exclude_decode = decode.id;
    return result;
  }
  std::unique_ptr<DecodeService::Stub> stub = DecodeService::NewStub(*channel);

  // 1. Reserve KV on the decode node.
  duet::v1::ReserveRequest reserve;
  reserve.set_request_id(request_id_);
  reserve.set_num_prompt_tokens(num_prompt);
  *reserve.mutable_sampling() = resolved_->sampling;
  reserve.set_lease_ms(absl::ToInt64Milliseconds(state_->options().lease));
  reserve.mutable_prompt_token_ids()->Assign(tokens.begin(), tokens.end());
  reserve.set_num_resumed_tokens(static_cast<int32_t>(num_resumed_));
  reserve.set_cache_salt(resolved_->cache_salt);
  reserve.set_speculation(resolved_->speculation);
  reserve.set_model_id(model.id);
  duet::v1::ReserveResponse reservation;
  grpc::Status reserve_status;
  {
    grpc::ClientContext context;
    Track(&context, decode);
    reserve_status = stub->Reserve(&context, reserve, &reservation);
    Untrack(&context);
  }
  if (!reserve_status.ok()) {
    state_->registry().CancelAssignment(decode);
    if (client_cancelled()) {
      result.status = absl::CancelledError("the client cancelled the call");
    } else if (std::optional<std::string> lost = LostReason(decode)) {
      result.status = NodeLostStatus(decode, *lost);
      result.retriable = true;
    } else {
      result.status = NodeFailure(decode, "refused the reservation", reserve_status);
      result.retriable = RetriableCode(reserve_status.error_code());
    }
    result.exclude_decode = decode.id;
    return result;
  }
  const std::string& reservation_id = reservation.reservation_id();
  if (RouterMetrics* m = state_->metrics()) m->Assigned(decode.id.value());
  LogRequestEvent(request_id_, "assigned",
                  absl::StrCat("decode=", decode.id.value(), " reservation=", reservation.reservation_id(),
                               " resumed_tokens=", num_resumed_));
  SendHeaderOnce();

  // 2. Open the token stream at once (the decode node buffers tokens until it is read).
  grpc::ClientContext stream_context;
  Track(&stream_context, decode);
  duet::v1::StreamTokensRequest stream_request;
  stream_request.set_request_id(request_id_);
  stream_request.set_reservation_id(reservation_id);
  std::unique_ptr<grpc::ClientReader<TokenEvent>> reader =
      stub->StreamTokens(&stream_context, stream_request);
  {
    absl::MutexLock lock(&mu_);
    stream_context_ = &stream_context;
    stream_cancelled_for_prefill_ = false;
  }

  // 3. Hand the prompt to a prefill node, asynchronously.
  std::optional<PrefillCall> prefill;
  absl::Status pick_error;
  // The prompt's block hashes as the prefill nodes (with the decode node's block size, which
  // they must share) name their cached blocks, for KV-aware routing.
  PickOptions pick = prefill_pick;
  pick.prefix_block_size = reservation.block_size();
  if (pick.prefix_block_size > 0) {
    pick.prefix_hashes =
        kv::HashBlocks(model.id, resolved_->cache_salt, tokens, pick.prefix_block_size);
  }
  absl::StatusOr<NodeAssignment> prefill_node = state_->registry().PickPrefill(num_prompt, pick);
  if (RouterMetrics* m = state_->metrics(); m != nullptr && prefill_node.ok()) {
    m->Routed(RoutingPolicyName(state_->options().routing_policy), prefill_node->reason);
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> prefill_channel =
      prefill_node.ok() ? state_->Channel(prefill_node->address)
                        : absl::StatusOr<std::shared_ptr<grpc::Channel>>(prefill_node.status());
  if (!prefill_channel.ok()) {
    pick_error = prefill_channel.status();
    stream_context.TryCancel();
  } else {
    prefill.emplace();
    prefill->node = *prefill_node;
    duet::v1::PrefillRequest& request = prefill->request;
    request.set_request_id(request_id_);
    request.mutable_token_ids()->Assign(tokens.begin(), tokens.end());
    request.set_num_resumed_tokens(static_cast<int32_t>(num_resumed_));
    *request.mutable_sampling() = resolved_->sampling;
    request.set_decode_address(decode.address);
    request.set_reservation_id(reservation_id);
    request.set_decode_block_size(reservation.block_size());
    request.set_decode_kv_dtype(reservation.kv_dtype());
    request.set_decode_cached_blocks(reservation.num_cached_blocks());
    request.set_cache_salt(resolved_->cache_salt);
    request.set_model_id(model.id);
    Track(&prefill->context, prefill->node);
    LogRequestEvent(request_id_, "assigned",
                    absl::StrCat("prefill=", prefill->node.id.value(), " routing=",
                                 prefill->node.reason, " cached_tokens_estimate=",
                                 prefill->node.cached_tokens));
    std::unique_ptr<PrefillService::Stub> prefill_stub = PrefillService::NewStub(*prefill_channel);
    PrefillCall* call = &*prefill;
    prefill_stub->async()->Prefill(
        &call->context, &call->request, &call->response,
        [this, call](grpc::Status status) { OnPrefillDone(call, std::move(status)); });
  }

  // 4. Relay the tokens.
  absl::Status relay_error;
  const grpc::Status stream_status = RelayStream(reader.get(), &stream_context, &relay_error);
  bool cancelled_for_prefill = false;
  {
    absl::MutexLock lock(&mu_);
    stream_context_ = nullptr;
    cancelled_for_prefill = stream_cancelled_for_prefill_;
  }
  Untrack(&stream_context);
  grpc::Status prefill_status;
  bool prefill_cancelled_here = false;
  if (prefill.has_value()) {
    absl::MutexLock lock(&mu_);
    // Tokens mean the decode node has the whole KV: the prefill is done or about to be (wait
    // for its cached_prompt_tokens). A stream that ended without tokens ended the attempt.
    if (!tokens_received_ && !prefill->done) {
      prefill->context.TryCancel();
      prefill_cancelled_here = true;
    }
    mu_.Await(absl::Condition(&prefill->done));
    prefill_status = prefill->status;
  }
  if (prefill.has_value()) Untrack(&prefill->context);
  // A decode node leaves Usage.cached_prompt_tokens 0; the prefill node knows.
  cached_prompt_tokens_ =
      prefill.has_value() && prefill_status.ok() ? prefill->response.cached_prompt_tokens() : 0;
  if (RouterMetrics* m = state_->metrics(); m != nullptr && prefill.has_value() &&
                                            prefill_status.ok()) {
    m->ObservePrefillTime(prefill->response.prefill_ms() / 1000.0);
    m->Assigned(prefill->node.id.value());
  }

  // 5. Decide.
  auto release = [&](const std::string& reason) {
    if (!LostReason(decode)) ReleaseReservation(stub.get(), decode, reservation_id, reason);
  };
  if (client_cancelled()) {
    release("client cancelled");
    result.status = absl::CancelledError("the client cancelled the call");
    return result;
  }
  if (preempted_ && !relay_->finished()) {
    release("preempted");  // the node dropped it already; Release is idempotent
    result.status = absl::AbortedError(absl::StrCat(NodeName(decode), " preempted the request"));
    result.preempted = true;
    return result;
  }
  if (FinishedOk()) {
    if (relay_->ended_by_relay()) release("the router ended the generation (stop condition)");
    if (prefill.has_value() && !prefill_status.ok()) {
      spdlog::warn("{}: {} failed after the decode node finished: {}", request_id_,
                   NodeName(prefill->node), prefill_status.error_message());
    }
    return result;  // OK
  }
  if (!relay_error.ok()) {
    release(std::string(relay_error.message()));
    result.status = absl::InternalError(
        absl::StrCat(NodeName(decode), " sent a bad token stream: ", relay_error.message()));
    return result;
  }
  if (std::optional<std::string> lost = LostReason(decode)) {
    result.status = NodeLostStatus(decode, *lost);
    result.retriable = true;
    result.exclude_decode = decode.id;
    return result;
  }
  if (!pick_error.ok()) {
    release(absl::StrCat("no prefill node: ", pick_error.message()));
    result.status = pick_error;
    return result;
  }
  const bool stream_failed_itself = !stream_status.ok() && !cancelled_for_prefill &&
                                    stream_status.error_code() != grpc::StatusCode::CANCELLED;
  if (!prefill_status.ok() && !prefill_cancelled_here && !stream_failed_itself) {
    release(absl::StrCat("prefill failed: ", prefill_status.error_message()));
    if (std::optional<std::string> lost = LostReason(prefill->node)) {
      result.status = NodeLostStatus(prefill->node, *lost);
      result.retriable = true;
    } else {
      result.status = NodeFailure(prefill->node, "failed the prefill", prefill_status);
      result.retriable = RetriableCode(prefill_status.error_code());
    }
    result.exclude_prefill = prefill->node.id;
    return result;
  }
  if (!stream_status.ok()) {
    release(absl::StrCat("token stream failed: ", stream_status.error_message()));
    const bool mid_stream = relay_->num_tokens() > 0;
    result.status =
        NodeFailure(decode, mid_stream ? "failed mid-stream" : "failed the token stream",
                    stream_status, mid_stream);
    result.retriable = RetriableCode(stream_status.error_code());
    result.exclude_decode = decode.id;
    return result;
  }
  result.status = BadEnd(decode);
  release(std::string(result.status.message()));
  return result;
}

GenerateCall::Attempt GenerateCall::RunColocated(const NodeAssignment& node) {
  Attempt result;
  result.exclude_decode = node.id;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = state_->Channel(node.address);
  if (!channel.ok()) {
    state_->registry().CancelAssignment(node);
    result.status = absl::UnavailableError(
        absl::StrCat(NodeName(node), " cannot be dialed: ", channel.status().message()));
    result.retriable = true;
    return result;
  }
  std::unique_ptr<DecodeService::Stub> stub = DecodeService::NewStub(*channel);
  duet::v1::RunRequest run;
  run.set_request_id(request_id_);
  const std::vector<int32_t> tokens = AttemptTokens();
  run.mutable_token_ids()->Assign(tokens.begin(), tokens.end());
  run.set_num_resumed_tokens(static_cast<int32_t>(num_resumed_));
  *run.mutable_sampling() = resolved_->sampling;
  run.set_cache_salt(resolved_->cache_salt);
  run.set_speculation(resolved_->speculation);
  run.set_model_id(state_->model().id);
  if (RouterMetrics* m = state_->metrics()) m->Assigned(node.id.value());
  LogRequestEvent(request_id_, "assigned",
                  absl::StrCat("colocated=", node.id.value(), " resumed_tokens=", num_resumed_));
  SendHeaderOnce();

  grpc::ClientContext context;
  Track(&context, node);
  std::unique_ptr<grpc::ClientReader<TokenEvent>> reader = stub->Run(&context, run);
  absl::Status relay_error;
  const grpc::Status status = RelayStream(reader.get(), &context, &relay_error);
  Untrack(&context);
  cached_prompt_tokens_ = node_cached_prompt_tokens_;

  if (client_cancelled()) {
    result.status = absl::CancelledError("the client cancelled the call");
  } else if (FinishedOk()) {
    // OK.
  } else if (!relay_error.ok()) {
    result.status = absl::InternalError(
        absl::StrCat(NodeName(node), " sent a bad token stream: ", relay_error.message()));
  } else if (std::optional<std::string> lost = LostReason(node)) {
    result.status = NodeLostStatus(node, *lost);
    result.retriable = true;
  } else if (!status.ok()) {
    const bool mid_stream = relay_->num_tokens() > 0;
    result.status = NodeFailure(node, mid_stream ? "failed mid-stream" : "failed the request",
                                status, mid_stream);
    result.retriable = RetriableCode(status.error_code());
  } else {
    result.status = BadEnd(node);
  }
  return result;
}

grpc::Status GenerateCall::RelayStream(grpc::ClientReaderInterface<TokenEvent>* reader,
                                       grpc::ClientContext* context, absl::Status* relay_error) {
  const std::string& echoed_id = client_request_id_.empty() ? request_id_ : client_request_id_;
  TokenEvent event;
  while (reader->Read(&event)) {
    if (relay_->finished() || !relay_error->ok()) continue;  // draining after the end
    if (event.token_ids_size() > 0) {
      LeaveQueue();
      absl::MutexLock lock(&mu_);
      tokens_received_ = true;
    }
    if (event.has_usage()) node_cached_prompt_tokens_ = event.usage().cached_prompt_tokens();
    if (event.preempted()) preempted_ = true;
    GenerateResponse delta;
    if (absl::Status status = relay_->Push(event, &delta); !status.ok()) {
      *relay_error = std::move(status);
      context->TryCancel();
      continue;
    }
    generated_.insert(generated_.end(), delta.token_ids().begin(), delta.token_ids().end());
    if (delta.token_ids_size() > 0) {
      const absl::Time now = absl::Now();
      if (RouterMetrics* m = state_->metrics()) {
        if (first_token_at_ == absl::InfinitePast()) {
          m->ObserveTimeToFirstToken(absl::ToDoubleSeconds(now - started_));
          if (delta.token_ids_size() > 1) {
            m->ObserveInterToken(0, delta.token_ids_size() - 1);
          }
        } else {
          m->ObserveInterToken(absl::ToDoubleSeconds(now - last_token_at_),
                               delta.token_ids_size());
        }
      }
      if (first_token_at_ == absl::InfinitePast()) {
        first_token_at_ = now;
        LogRequestEvent(request_id_, "first_token",
                        absl::StrCat("ttft_ms=", absl::ToDoubleMilliseconds(now - started_)));
      }
      last_token_at_ = now;
    }
    delta.set_request_id(echoed_id);
    if (FinishedOk()) {
      final_ = std::move(delta);
      if (relay_->ended_by_relay()) context->TryCancel();
      continue;
    }
    // FINISH_REASON_ERROR: the stream's status says what failed; Run() sends the last message.
    delta.set_finish_reason(duet::v1::FINISH_REASON_UNSPECIFIED);
    if (delta.token_ids_size() > 0 || !delta.text().empty()) Send(std::move(delta));
  }
  return reader->Finish();
}

bool GenerateCall::FinishedOk() const {
  return relay_->finished() && relay_->finish_reason() != duet::v1::FINISH_REASON_ERROR;
}

absl::Status GenerateCall::BadEnd(const NodeAssignment& node) const {
  if (relay_->finished()) {
    return absl::InternalError(
        absl::StrCat(NodeName(node), " reported FINISH_REASON_ERROR but ended the stream with OK"));
  }
  return absl::InternalError(
      absl::StrCat(NodeName(node), " ended the token stream without a finish reason"));
}

void GenerateCall::OnPrefillDone(PrefillCall* prefill, grpc::Status status) {
  // The prompt is no longer queued on the prefill node, whatever the outcome: take its charge
  // back now rather than at the node's next heartbeat, or cache-aware routing would see a busy
  // node that is idle (and send the next request with the same prefix elsewhere).
  state_->registry().CancelAssignment(prefill->node);
  absl::MutexLock lock(&mu_);
  prefill->status = std::move(status);
  prefill->done = true;
  // A failed prefill before any token: the decode node will never produce one; stop waiting.
  if (!prefill->status.ok() && !tokens_received_ && stream_context_ != nullptr) {
    stream_cancelled_for_prefill_ = true;
    stream_context_->TryCancel();
  }
}

void GenerateCall::ReleaseReservation(DecodeService::Stub* stub, const NodeAssignment& decode,
                                      const std::string& reservation_id,
                                      const std::string& reason) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + state_->options().release_timeout));
  duet::v1::ReleaseRequest request;
  request.set_request_id(request_id_);
  request.set_reservation_id(reservation_id);
  request.set_reason(reason);
  duet::v1::ReleaseResponse response;
  const grpc::Status status = stub->Release(&context, request, &response);
  if (!status.ok()) {
    spdlog::warn("{}: Release on {} failed: {}", request_id_, NodeName(decode),
                 status.error_message());
  }
}

}  // namespace duet::router
