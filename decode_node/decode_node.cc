// DecodeService handlers (except PushKv, in kv_intake.cc) and the node's lifecycle. Handlers
// check their input, update the tables under mu_ and hand engine work to the worker
// (decode_worker.cc); none of them blocks.
#include "decode_node/decode_node.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/request_log.h"
#include "common/base/status.h"
#include "common/kv/block_hash.h"
#include "common/kv/kv_payload.h"
#include "common/rpc/status_convert.h"
#include "node/node_options.h"
#include "node/prefix_cache_counters.h"

namespace duet::decode {
namespace {

sched::SchedulerConfig SchedulerConfigFor(const DecodeNodeOptions& o, const Engine& engine) {
  sched::SchedulerConfig c;
  c.role = o.role;
  c.max_num_seqs = o.max_num_seqs;
  c.max_num_batched_tokens = o.max_num_batched_tokens;
  c.max_prefill_chunk_tokens = o.prefill_chunk_tokens;
  c.block_size = engine.kv_layout().block_size;
  c.max_sequences = o.max_num_seqs;
  c.enable_preemption = true;
  // Colocated nodes look prompts up at admission; decode nodes at Reserve (DoReserve).
  c.enable_prefix_caching = o.enable_prefix_caching;
  c.model_id = o.model_id;
  return c;
}

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(rpc::ToGrpcStatus(status));
  return reactor;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DecodeNode>> DecodeNode::Create(const DecodeNodeOptions& options,
                                                               Engine* engine,
                                                               const Tokenizer* tokenizer) {
  if (options.role != sched::Role::kDecode && options.role != sched::Role::kColocated) {
    return absl::InvalidArgumentError(
        absl::StrCat("a decode node runs the decode or colocated role, not ",
                     std::string(sched::RoleName(options.role))));
  }
  if (absl::Status s = SchedulerConfigFor(options, *engine).Validate(); !s.ok()) return s;
  const kv::KvLayout& layout = engine->kv_layout();
  if (layout.dtype == kv::CacheDtype::kFp8E4M3 && layout.num_tail_slots != options.max_num_seqs) {
    return absl::InvalidArgumentError(absl::StrCat("the engine has ", layout.num_tail_slots,
                                                   " FP8 tail slots but max_num_seqs is ",
                                                   options.max_num_seqs, "; they must be equal"));
  }
  return std::unique_ptr<DecodeNode>(new DecodeNode(options, engine, tokenizer));
}

DecodeNode::DecodeNode(const DecodeNodeOptions& options, Engine* engine, const Tokenizer* tokenizer)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()),
      engine_(engine),
      tokenizer_(tokenizer),
      vocab_size_(static_cast<int32_t>(engine->config().vocab_size)),
      total_blocks_(engine->kv_layout().num_blocks),
      blocks_(engine->kv_layout().num_blocks),
      tail_slots_(options.max_num_seqs),
      reservations_(&blocks_, clock_, absl::StrCat(options.node_id, "/res-")),
      scheduler_(SchedulerConfigFor(options, *engine), &blocks_, clock_, &tail_slots_) {
  worker_ = std::thread([this] { WorkerLoop(); });
}

DecodeNode::~DecodeNode() { Stop(); }

v1::KvDtype DecodeNode::kv_dtype() const { return node::ToProtoDtype(engine_->kv_layout().dtype); }

absl::Status DecodeNode::CheckModel(const std::string& model_id) const {
  if (model_id.empty() || model_id == options_.model_id) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("node ", options_.node_id, " serves model '",
                                                    options_.model_id, "', not '", model_id, "'"));
}

absl::StatusOr<node::RequestSampling> DecodeNode::CheckSampling(const v1::SamplingParams& sampling,
                                                                int64_t num_prompt_tokens) const {
  absl::StatusOr<node::RequestSampling> s =
      node::ResolveSampling(sampling, vocab_size_, /*require_max_tokens=*/true);
  if (!s.ok()) return s.status();
  const int64_t context = engine_->config().context_length;
  if (num_prompt_tokens + s->max_tokens > context) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt (", num_prompt_tokens, " tokens) plus max_tokens (", s->max_tokens,
                     ") exceeds the model's context length of ", context, " tokens"));
  }
  return s;
}

absl::Status DecodeNode::AcceptingWork() const {
  if (stopped_) return absl::UnavailableError(absl::StrCat("node ", options_.node_id, " stopped"));
  if (draining_) {
    return rpc::WithRetryAfter(
        absl::UnavailableError(absl::StrCat("node ", options_.node_id, " is draining")),
        options_.retry_after);
  }
  return absl::OkStatus();
}

absl::Status DecodeNode::Insert(const std::shared_ptr<Request>& r) {
  if (std::shared_ptr<Request> old = Find(r->id); old != nullptr) {
    if (old->phase != Phase::kDone) {
      return absl::AlreadyExistsError(
          absl::StrCat("request ", r->id.ToString(), " is already on node ", options_.node_id));
    }
    requests_.erase(r->id);  // a result nobody collected
  }
  r->serial = next_serial_++;
  requests_.emplace(r->id, r);
  wake_ = true;
  return absl::OkStatus();
}

std::shared_ptr<DecodeNode::Request> DecodeNode::Find(const RequestId& id) const {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second;
}

// ---- Reserve -------------------------------------------------------------------------------

grpc::ServerUnaryReactor* DecodeNode::Reserve(grpc::CallbackServerContext* context,
                                              const v1::ReserveRequest* request,
                                              v1::ReserveResponse* response) {
  absl::StatusOr<v1::ReserveResponse> result = DoReserve(*request);
  if (result.ok()) *response = std::move(*result);
  return FinishUnary(context, result.status());
}

absl::StatusOr<v1::ReserveResponse> DecodeNode::DoReserve(const v1::ReserveRequest& request) {
  if (options_.role == sched::Role::kColocated) {
    return absl::FailedPreconditionError(
        absl::StrCat("node ", options_.node_id,
                     " runs colocated and takes whole requests through Run, not reservations"));
  }
  if (request.request_id().empty()) {
    return absl::InvalidArgumentError("ReserveRequest.request_id is empty");
  }
  if (absl::Status s = CheckModel(request.model_id()); !s.ok()) return s;
  const int64_t n = request.num_prompt_tokens();
  if (n < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReserveRequest.num_prompt_tokens must be >= 1, got ", n));
  }
  if (request.lease_ms() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReserveRequest.lease_ms must be > 0, got ", request.lease_ms()));
  }
  const int ids = request.prompt_token_ids_size();
  if (ids != 0 && ids != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReserveRequest.prompt_token_ids has ", ids,
                     " entries; it must be empty or have num_prompt_tokens = ", n));
  }
  for (int i = 0; i < ids; ++i) {
    const int32_t t = request.prompt_token_ids(i);
    if (t < 0 || t >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt_token_ids[", i, "] = ", t, " is outside the vocab [0, ", vocab_size_, ")"));
    }
  }
  const int64_t resumed = request.num_resumed_tokens();
  if (resumed < 0 || resumed >= n || (resumed > 0 && ids != n)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReserveRequest.num_resumed_tokens must be in [0, num_prompt_tokens = ", n,
        ") and needs prompt_token_ids; got ", resumed, " with ", ids, " ids"));
  }
  // The original prompt plus the completion still to come must fit the context.
  absl::StatusOr<node::RequestSampling> sampling = CheckSampling(request.sampling(), n - resumed);
  if (!sampling.ok()) return sampling.status();
  const kv::KvLayout& layout = engine_->kv_layout();
  const int64_t needed = kv::NumBlocksFor(layout, n);
  const int64_t worst = kv::NumBlocksFor(layout, n - resumed + sampling->max_tokens - 1);
  if (worst > total_blocks_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request ", request.request_id(), " needs up to ", worst, " KV blocks of ",
        layout.block_size, " tokens (", n, " prompt tokens, max_tokens ", sampling->max_tokens,
        "); node ", options_.node_id, " has ", total_blocks_, " in all"));
  }

  auto r = std::make_shared<Request>(
      tokenizer_, *std::move(sampling),
      std::vector<int32_t>(request.prompt_token_ids().begin(), request.prompt_token_ids().end()),
      vocab_size_);
  r->id = RequestId(request.request_id());
  r->num_prompt_tokens = n;
  r->sink = std::make_shared<node::TokenSink>(n, 0);
  r->cache_salt = request.cache_salt();
  r->speculate = request.speculation() == v1::SPECULATION_ON;
  // Full-block hashes of the prompt, for the prefix-cache lookup below.
  const std::vector<kv::BlockHash> prompt_hashes =
      options_.enable_prefix_caching && ids == n
          ? kv::HashBlocks(options_.model_id, request.cache_salt(), r->prompt, layout.block_size)
          : std::vector<kv::BlockHash>{};
  if (resumed > 0) {
    DUET_RETURN_IF_ERROR(r->completion.Resume(
        absl::MakeConstSpan(r->prompt).subspan(static_cast<size_t>(n - resumed))));
  }

  absl::MutexLock lock(&mu_);
  if (absl::Status s = AcceptingWork(); !s.ok()) return s;
  if (std::shared_ptr<Request> old = Find(r->id); old != nullptr && old->phase != Phase::kDone) {
    return absl::AlreadyExistsError(
        absl::StrCat("request ", request.request_id(), " is already on node ", options_.node_id));
  }
  // Decode-side prefix reuse (a conversation continuing on this node): the prompt's leading
  // blocks this node holds already are not sent again. Never the block of the last prompt
  // token, which carries the first token.
  const absl::Span<const kv::BlockHash> hashes =
      absl::MakeConstSpan(prompt_hashes)
          .subspan(0, std::min(prompt_hashes.size(),
                               static_cast<size_t>(kv::MaxReusedBlocks(n, layout.block_size))));
  const int64_t hit = blocks_.LookupPrefix(hashes);
  const int64_t hit_evictable = blocks_.CountEvictable(hashes, hit);
  // Keep one block per running sequence free for its next decode position, so a reservation
  // does not preempt sequences that are already decoding.
  const int64_t headroom = scheduler_.num_running();
  if (blocks_.num_free() - hit_evictable - (needed - hit) < headroom) {
    return rpc::WithRetryAfter(
        absl::ResourceExhaustedError(
            absl::StrCat("node ", options_.node_id, " has ", blocks_.num_free(),
                         " free KV blocks; request ", request.request_id(), " needs ",
                         needed - hit, " (", hit, " more are cached) and ", headroom,
                         " stay free for the running sequences")),
        options_.retry_after);
  }
  absl::StatusOr<std::vector<int32_t>> slot = tail_slots_.Allocate(1);
  if (!slot.ok()) {
    return rpc::WithRetryAfter(absl::ResourceExhaustedError(absl::StrCat(
                                   "node ", options_.node_id, " already holds ",
                                   options_.max_num_seqs, " sequences (max_num_seqs)")),
                               options_.retry_after);
  }
  std::vector<int32_t> prefix = blocks_.AcquirePrefix(hashes, hit);
  absl::StatusOr<kv::Reservation> res =
      reservations_.Reserve(r->id, needed, absl::Milliseconds(request.lease_ms()), prefix);
  if (!res.ok()) {
    (void)blocks_.Release(prefix);
    (void)tail_slots_.Release(*slot);
    if (res.status().code() == absl::StatusCode::kResourceExhausted) {
      return rpc::WithRetryAfter(res.status(), options_.retry_after);
    }
    return res.status();
  }
  r->reservation_id = res->reservation_id;
  r->tail_slot = (*slot)[0];
  r->num_present_blocks = hit;
  if (options_.enable_prefix_caching) {
    reserve_prefix_stats_.queried_tokens += n;
    reserve_prefix_stats_.hit_tokens += hit * layout.block_size;
  }
  if (absl::Status s = Insert(r); !s.ok()) return s;  // cannot fail: checked above

  LogRequestEvent(r->id.value(), "reserved",
                  absl::StrCat("node=", options_.node_id, " reservation=", res->reservation_id,
                               " blocks=", res->blocks.size(), " cached_blocks=", hit,
                               " prompt_tokens=", n,
                               " resumed_tokens=", resumed));
  v1::ReserveResponse response;
  response.set_reservation_id(res->reservation_id);
  response.set_lease_expires_unix_ms(
      absl::ToUnixMillis(absl::Now() + (res->expires_at - clock_->Now())));
  response.set_num_blocks(static_cast<int32_t>(res->blocks.size()));
  response.set_block_size(static_cast<int32_t>(layout.block_size));
  response.set_kv_dtype(kv_dtype());
  response.set_num_cached_blocks(static_cast<int32_t>(hit));
  return response;
}

// ---- StreamTokens, Release, Run ----------------------------------------------------------------

grpc::ServerWriteReactor<v1::TokenEvent>* DecodeNode::StreamTokens(
    grpc::CallbackServerContext* /*context*/, const v1::StreamTokensRequest* request) {
  const RequestId id(request->request_id());
  std::shared_ptr<node::TokenSink> sink;
  uint64_t serial = 0;
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Request> r = Find(id);
    if (r == nullptr || r->reservation_id.empty() ||
        (!request->reservation_id().empty() && request->reservation_id() != r->reservation_id)) {
      return node::TokenStreamReactor::Failed(absl::NotFoundError(absl::StrCat(
          "node ", options_.node_id, " has no reservation '", request->reservation_id(),
          "' for request '", request->request_id(), "' (unknown, released or expired)")));
    }
    if (r->stream_opened) {
      return node::TokenStreamReactor::Failed(absl::AlreadyExistsError(
          absl::StrCat("the token stream of request ", request->request_id(), " is already open")));
    }
    r->stream_opened = true;
    sink = r->sink;
    serial = r->serial;
    if (r->phase == Phase::kDone) requests_.erase(id);  // the sink holds the result
  }
  return node::TokenStreamReactor::Start(std::move(sink),
                                         [this, id, serial] { CancelRequest(id, serial); });
}

void DecodeNode::CancelRequest(const RequestId& id, uint64_t serial) {
  const absl::Status status = absl::CancelledError(
      absl::StrCat("the token stream of request ", id.ToString(), " was cancelled"));
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Request> r = Find(id);
    if (r == nullptr || r->serial != serial) return;
    if (r->phase != Phase::kRunning) {
      DropReserved(*r, status);  // frees a reservation at once
      requests_.erase(id);
      return;
    }
  }
  Post([this, id, serial, status](bool stopped) {
    if (stopped) return;
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Request> r = Find(id);
    if (r != nullptr && r->serial == serial) AbortRunning(*r, status);
  });
}

grpc::ServerUnaryReactor* DecodeNode::Release(grpc::CallbackServerContext* context,
                                              const v1::ReleaseRequest* request,
                                              v1::ReleaseResponse* response) {
  const RequestId id(request->request_id());
  const absl::Status status = absl::CancelledError(
      absl::StrCat("request ", request->request_id(), " released: ", request->reason()));
  uint64_t serial = 0;
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Request> r = Find(id);
    if (r == nullptr ||
        (!request->reservation_id().empty() && request->reservation_id() != r->reservation_id)) {
      response->set_released(false);
      return FinishUnary(context, absl::OkStatus());
    }
    if (r->phase != Phase::kRunning) {
      const kv::Reservation* res = reservations_.Find(r->reservation_id);
      response->set_released(r->phase == Phase::kReserved);
      response->set_num_blocks_freed(res != nullptr ? static_cast<int32_t>(res->blocks.size()) : 0);
      DropReserved(*r, status);
      requests_.erase(id);
      return FinishUnary(context, absl::OkStatus());
    }
    serial = r->serial;
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Post([this, reactor, response, id, serial, status](bool stopped) {
    if (stopped) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the decode node stopped"));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      std::shared_ptr<Request> r = Find(id);
      if (r != nullptr && r->serial == serial && r->phase == Phase::kRunning) {
        const std::optional<sched::RequestInfo> info = scheduler_.Info(id);
        response->set_released(true);
        response->set_num_blocks_freed(info ? static_cast<int32_t>(info->num_blocks) : 0);
        AbortRunning(*r, status);
      }
    }
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerWriteReactor<v1::TokenEvent>* DecodeNode::Run(grpc::CallbackServerContext* /*context*/,
                                                          const v1::RunRequest* request) {
  if (options_.role != sched::Role::kColocated) {
    return node::TokenStreamReactor::Failed(
        absl::UnimplementedError(absl::StrCat("node ", options_.node_id,
                                              " is a decode node; Run is served by colocated "
                                              "nodes")));
  }
  if (request->request_id().empty()) {
    return node::TokenStreamReactor::Failed(
        absl::InvalidArgumentError("RunRequest.request_id is empty"));
  }
  if (absl::Status s = CheckModel(request->model_id()); !s.ok()) {
    return node::TokenStreamReactor::Failed(s);
  }
  const int64_t n = request->token_ids_size();
  if (n < 1) {
    return node::TokenStreamReactor::Failed(
        absl::InvalidArgumentError("RunRequest.token_ids is empty"));
  }
  for (int i = 0; i < n; ++i) {
    const int32_t t = request->token_ids(i);
    if (t < 0 || t >= vocab_size_) {
      return node::TokenStreamReactor::Failed(absl::InvalidArgumentError(absl::StrCat(
          "token_ids[", i, "] = ", t, " is outside the vocab [0, ", vocab_size_, ")")));
    }
  }
  const int64_t resumed = request->num_resumed_tokens();
  if (resumed < 0 || resumed >= n) {
    return node::TokenStreamReactor::Failed(absl::InvalidArgumentError(absl::StrCat(
        "RunRequest.num_resumed_tokens must be in [0, ", n, "), got ", resumed)));
  }
  absl::StatusOr<node::RequestSampling> sampling = CheckSampling(request->sampling(), n - resumed);
  if (!sampling.ok()) return node::TokenStreamReactor::Failed(sampling.status());

  auto r = std::make_shared<Request>(
      tokenizer_, *std::move(sampling),
      std::vector<int32_t>(request->token_ids().begin(), request->token_ids().end()), vocab_size_);
  r->id = RequestId(request->request_id());
  r->num_prompt_tokens = n;
  r->phase = Phase::kRunning;
  r->stream_opened = true;
  r->sink = std::make_shared<node::TokenSink>(n, 0);
  r->cache_salt = request->cache_salt();
  r->speculate = request->speculation() == v1::SPECULATION_ON;
  if (resumed > 0) {
    if (absl::Status s = r->completion.Resume(
            absl::MakeConstSpan(r->prompt).subspan(static_cast<size_t>(n - resumed)));
        !s.ok()) {
      return node::TokenStreamReactor::Failed(s);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    absl::Status s = AcceptingWork();
    if (s.ok()) s = Insert(r);
    if (!s.ok()) return node::TokenStreamReactor::Failed(s);
  }
  const uint64_t serial = r->serial;
  Post([this, r](bool stopped) {
    if (stopped) return;  // Stop() failed the stream
    absl::MutexLock lock(&mu_);
    if (r->phase != Phase::kRunning) return;  // cancelled before it was queued
    sched::RequestSpec spec;
    spec.id = r->id;
    spec.prompt = r->prompt;
    spec.max_tokens = r->completion.sampling().max_tokens;
    spec.cache_salt = r->cache_salt;
    if (absl::Status s = scheduler_.AddRequest(std::move(spec)); !s.ok()) {
      r->sink->Fail(s);
      r->phase = Phase::kDone;
      MarkDone(*r);
    }
  });
  const RequestId id = r->id;
  return node::TokenStreamReactor::Start(r->sink,
                                         [this, id, serial] { CancelRequest(id, serial); });
}

// ---- Lifecycle -----------------------------------------------------------------------------

void DecodeNode::Post(Task task) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopped_) {
      tasks_.push_back(std::move(task));
      return;
    }
  }
  task(/*stopped=*/true);
}

void DecodeNode::Kick() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void DecodeNode::StartDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool DecodeNode::AwaitDrained(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto drained = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!tasks_.empty()) return false;
    for (const auto& [id, r] : requests_) {
      if (r->phase != Phase::kDone) return false;
    }
    return true;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&drained), timeout);
}

void DecodeNode::Stop() {
  std::deque<Task> tasks;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  worker_.join();
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(tasks_);
    const absl::Status status =
        absl::UnavailableError(absl::StrCat("node ", options_.node_id, " stopped"));
    for (auto& [id, r] : requests_) r->sink->Fail(status);
    requests_.clear();
  }
  for (Task& task : tasks) task(/*stopped=*/true);
}

v1::NodeLoad DecodeNode::Load() const {
  absl::MutexLock lock(&mu_);
  v1::NodeLoad load;
  load.set_queued_prefill_tokens(scheduler_.num_pending_prefill_tokens());
  load.set_running_sequences(static_cast<int32_t>(scheduler_.num_running()));
  load.set_waiting_sequences(
      static_cast<int32_t>(scheduler_.num_waiting() + reservations_.num_reservations()));
  load.set_free_kv_blocks(blocks_.num_free());
  load.set_total_kv_blocks(total_blocks_);
  load.set_active_requests(static_cast<int32_t>(requests_.size()));
  return load;
}

void DecodeNode::AddCounters(google::protobuf::Map<std::string, int64_t>* counters) const {
  absl::MutexLock lock(&mu_);
  (*counters)["kv_chunks_accepted"] = num_chunks_accepted_;
  (*counters)["kv_transfers_failed"] = num_transfers_failed_;
  (*counters)["kv_checksum_errors"] = num_checksum_errors_;
  (*counters)["leases_expired"] = num_leases_expired_;
  (*counters)["preemptions"] = scheduler_.num_preemptions();
  if (options_.speculator != nullptr) {
    (*counters)["spec_decode_num_drafts"] = spec_stats_.num_drafts;
    (*counters)["spec_decode_num_draft_tokens"] = spec_stats_.num_draft_tokens;
    (*counters)["spec_decode_num_accepted_tokens"] = spec_stats_.num_accepted_tokens;
    for (size_t i = 0; i < spec_stats_.accepted_per_position.size(); ++i) {
      (*counters)[absl::StrCat("spec_decode_accepted_pos_", i)] =
          spec_stats_.accepted_per_position[i];
    }
  }
  if (options_.enable_prefix_caching) {
    // Colocated: prompts looked up at admission; decode: at reservation.
    node::AddPrefixCacheCounters(options_.role == sched::Role::kColocated
                                     ? scheduler_.prefix_cache_stats()
                                     : reserve_prefix_stats_,
                                 blocks_, counters);
  }
}

DecodeNode::Snapshot DecodeNode::SnapshotLocked() const {
  Snapshot s;
  s.free_blocks = blocks_.num_free();
  s.free_tail_slots = tail_slots_.num_free();
  s.num_reservations = reservations_.num_reservations();
  s.num_requests = static_cast<int64_t>(requests_.size());
  s.num_running = scheduler_.num_running();
  s.num_waiting = scheduler_.num_waiting();
  s.num_chunks_accepted = num_chunks_accepted_;
  s.num_preemptions = scheduler_.num_preemptions();
  for (const auto& [id, r] : requests_) {
    if (r->stream_opened && r->phase != Phase::kDone) ++s.num_open_streams;
  }
  return s;
}

DecodeNode::Snapshot DecodeNode::GetSnapshot() const {
  absl::MutexLock lock(&mu_);
  return SnapshotLocked();
}

bool DecodeNode::AwaitState(const std::function<bool(const Snapshot&)>& pred,
                            absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto holds = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pred(SnapshotLocked()); };
  return mu_.AwaitWithTimeout(absl::Condition(&holds), timeout);
}

}  // namespace duet::decode
