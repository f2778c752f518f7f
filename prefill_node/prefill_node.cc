// PrefillService.Prefill and the node's lifecycle. The handler checks the request, creates the
// job and its KvSender (which opens the PushKv call at once) and queues the prompt for the
// worker (prefill_worker.cc); the RPC finishes when the sender reports the decode node's
// answer, when the request fails, or when the router cancels it.
#include "prefill_node/prefill_node.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/request_log.h"
#include "common/base/status.h"
#include "common/kv/block_hash.h"
#include "common/kv/kv_payload.h"
#include "common/rpc/channel.h"
#include "common/rpc/status_convert.h"
#include "node/node_options.h"
#include "node/prefix_cache_counters.h"

namespace duet::prefill {
namespace {

sched::SchedulerConfig SchedulerConfigFor(const PrefillNodeOptions& o, const Engine& engine) {
  sched::SchedulerConfig c;
  c.role = sched::Role::kPrefill;
  c.max_num_seqs = o.max_num_seqs;
  c.max_num_batched_tokens = o.max_num_batched_tokens;
  c.max_prefill_chunk_tokens = o.prefill_chunk_tokens;
  c.block_size = engine.kv_layout().block_size;
  c.max_sequences = o.max_num_seqs;
  // No preemption: a prompt is admitted only when all of it fits, so KV already sent is never
  // recomputed.
  c.enable_preemption = false;
  c.enable_prefix_caching = o.enable_prefix_caching;
  c.model_id = o.model_id;
  return c;
}

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

}  // namespace

class PrefillNode::PrefillReactor : public grpc::ServerUnaryReactor {
 public:
  explicit PrefillReactor(PrefillNode* node) : node_(node) {}
  void OnCancel() override { node_->CancelJob(id, serial); }
  void OnDone() override { delete this; }

  // Set under node_->mu_ before the handler returns.
  RequestId id;
  uint64_t serial = 0;

 private:
  PrefillNode* const node_;
};

absl::StatusOr<std::unique_ptr<PrefillNode>> PrefillNode::Create(const PrefillNodeOptions& options,
                                                                 Engine* engine,
                                                                 const Tokenizer* tokenizer) {
  if (absl::Status s = SchedulerConfigFor(options, *engine).Validate(); !s.ok()) return s;
  const kv::KvLayout& layout = engine->kv_layout();
  if (layout.dtype == kv::CacheDtype::kFp8E4M3 && layout.num_tail_slots != options.max_num_seqs) {
    return absl::InvalidArgumentError(absl::StrCat("the engine has ", layout.num_tail_slots,
                                                   " FP8 tail slots but max_num_seqs is ",
                                                   options.max_num_seqs, "; they must be equal"));
  }
  if (options.layers_per_group < 0 || options.max_chunk_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("layers_per_group must be >= 0 and max_chunk_bytes >= 1, got ",
                     options.layers_per_group, " and ", options.max_chunk_bytes));
  }
  return std::unique_ptr<PrefillNode>(new PrefillNode(options, engine, tokenizer));
}

PrefillNode::PrefillNode(const PrefillNodeOptions& options, Engine* engine,
                         const Tokenizer* tokenizer)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()),
      engine_(engine),
      tokenizer_(tokenizer),
      vocab_size_(static_cast<int32_t>(engine->config().vocab_size)),
      total_blocks_(engine->kv_layout().num_blocks),
      layers_per_group_(options.layers_per_group > 0
                            ? options.layers_per_group
                            : std::max<int64_t>(1, (engine->config().num_layers + 3) / 4)),
      blocks_(engine->kv_layout().num_blocks),
      tail_slots_(options.max_num_seqs),
      scheduler_(SchedulerConfigFor(options, *engine), &blocks_, clock_, &tail_slots_) {
  {
    absl::MutexLock lock(&mu_);
    blocks_.set_record_events(options.enable_prefix_caching);
  }
  worker_ = std::thread([this] { WorkerLoop(); });
}

PrefillNode::~PrefillNode() { Stop(); }

v1::KvDtype PrefillNode::kv_dtype() const { return node::ToProtoDtype(engine_->kv_layout().dtype); }

grpc::ServerUnaryReactor* PrefillNode::Prefill(grpc::CallbackServerContext* /*context*/,
                                               const v1::PrefillRequest* request,
                                               v1::PrefillResponse* response) {
  auto* reactor = new PrefillReactor(this);
  // NewJob attaches the reactor before the job can run: a request served from the prefix cache
  // can finish before this handler would get the lock again.
  absl::StatusOr<std::shared_ptr<Job>> job = NewJob(*request, response, reactor);
  if (!job.ok()) reactor->Finish(rpc::ToGrpcStatus(job.status()));
  return reactor;
}

absl::StatusOr<std::shared_ptr<PrefillNode::Job>> PrefillNode::NewJob(
    const v1::PrefillRequest& request, v1::PrefillResponse* response, PrefillReactor* reactor) {
  if (request.request_id().empty()) {
    return absl::InvalidArgumentError("PrefillRequest.request_id is empty");
  }
  if (!request.model_id().empty() && request.model_id() != options_.model_id) {
    return absl::FailedPreconditionError(absl::StrCat("node ", options_.node_id, " serves model '",
                                                      options_.model_id, "', not '",
                                                      request.model_id(), "'"));
  }
  const int64_t n = request.token_ids_size();
  if (n < 1) return absl::InvalidArgumentError("PrefillRequest.token_ids is empty");
  for (int i = 0; i < n; ++i) {
    const int32_t t = request.token_ids(i);
    if (t < 0 || t >= vocab_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("token_ids[", i, "] = ", t, " is outside the vocab [0, ", vocab_size_, ")"));
    }
  }
  const int64_t resumed = request.num_resumed_tokens();
  if (resumed < 0 || resumed >= n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PrefillRequest.num_resumed_tokens must be in [0, ", n, "), got ", resumed));
  }
  const int64_t context = engine_->config().context_length;
  if (n >= context) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", n,
                                                   " tokens; the model's context length is ",
                                                   context, " (room for a completion needed)"));
  }
  if (request.decode_address().empty() || request.reservation_id().empty()) {
    return absl::InvalidArgumentError(
        "PrefillRequest.decode_address and reservation_id are required");
  }
  const kv::KvLayout& layout = engine_->kv_layout();
  if (request.decode_block_size() != layout.block_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("the decode node's block size (", request.decode_block_size(),
                     ") differs from this node's (", layout.block_size, ")"));
  }
  if (request.decode_kv_dtype() != v1::KV_DTYPE_UNSPECIFIED &&
      request.decode_kv_dtype() != kv_dtype()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the decode node's KV dtype (", v1::KvDtype_Name(request.decode_kv_dtype()),
                     ") differs from this node's (", v1::KvDtype_Name(kv_dtype()), ")"));
  }
  absl::StatusOr<node::RequestSampling> sampling =
      node::ResolveSampling(request.sampling(), vocab_size_, /*require_max_tokens=*/false);
  if (!sampling.ok()) return sampling.status();
  const int64_t needed = kv::NumBlocksFor(layout, n);
  if (needed > total_blocks_) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt needs ", needed, " KV blocks of ", layout.block_size,
                     " tokens; node ", options_.node_id, " has ", total_blocks_, " in all"));
  }
  const int64_t max_skip = kv::MaxReusedBlocks(n, layout.block_size);
  if (request.decode_cached_blocks() < 0 || request.decode_cached_blocks() > max_skip) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PrefillRequest.decode_cached_blocks must be in [0, ", max_skip, "] for a prompt of ", n,
        " tokens (the last token's block is always sent), got ", request.decode_cached_blocks()));
  }
  kv::PlannerOptions planner_options;
  planner_options.skip_blocks = request.decode_cached_blocks();
  planner_options.num_layers = static_cast<int32_t>(layout.num_layers);
  planner_options.num_tokens = n;
  planner_options.block_size = static_cast<int32_t>(layout.block_size);
  planner_options.max_chunk_payload_bytes = options_.max_chunk_bytes;
  planner_options.payload_bytes = [layout, n](int32_t lb, int32_t le, int32_t bb, int32_t be) {
    return kv::KvPayloadBytes(layout, n, lb, le, bb, be);
  };
  absl::StatusOr<kv::KvTransferPlanner> planner =
      kv::KvTransferPlanner::Create(std::move(planner_options));
  if (!planner.ok()) return planner.status();

  auto job = std::make_shared<Job>(
      tokenizer_, *std::move(sampling),
      std::vector<int32_t>(request.token_ids().begin(), request.token_ids().end()), vocab_size_,
      *std::move(planner));
  if (resumed > 0) {
    DUET_RETURN_IF_ERROR(job->completion.Resume(
        absl::MakeConstSpan(job->prompt).subspan(static_cast<size_t>(n - resumed))));
  }
  job->id = RequestId(request.request_id());
  job->request = request;
  job->request.clear_token_ids();
  job->response = response;

  absl::MutexLock lock(&mu_);
  if (stopped_) return absl::UnavailableError(absl::StrCat("node ", options_.node_id, " stopped"));
  if (draining_) {
    return rpc::WithRetryAfter(
        absl::UnavailableError(absl::StrCat("node ", options_.node_id, " is draining")),
        options_.retry_after);
  }
  bool exists = jobs_.contains(job->id);
  for (const std::shared_ptr<Job>& old : retired_) {
    exists = exists || (old->id == job->id && old->in_scheduler);
  }
  if (exists) {
    return absl::AlreadyExistsError(
        absl::StrCat("request ", request.request_id(), " is already on node ", options_.node_id));
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = ChannelFor(request.decode_address());
  if (!channel.ok()) return channel.status();
  job->serial = next_serial_++;
  job->arrival = clock_->Now();
  job->in_scheduler = true;
  job->reactor = reactor;
  reactor->id = job->id;
  reactor->serial = job->serial;
  const RequestId id = job->id;
  const uint64_t serial = job->serial;
  job->sender = std::make_unique<KvSender>(*channel, request.decode_address(), request.request_id(),
                                           request.reservation_id(),
                                           [this, id, serial](KvSender::Result result) {
                                             OnTransferDone(id, serial, std::move(result));
                                           });
  jobs_.emplace(id, job);
  tasks_.push_back([this, job](bool stopped) {
    if (stopped) return;
    absl::MutexLock task_lock(&mu_);
    if (!job->in_scheduler) return;  // ended before it was queued
    sched::RequestSpec spec;
    spec.id = job->id;
    spec.prompt = job->prompt;
    spec.max_tokens = 1;
    spec.cache_salt = job->request.cache_salt();
    if (absl::Status s = scheduler_.AddRequest(std::move(spec)); !s.ok()) {
      job->in_scheduler = false;
      FinishJob(*job, s);
    }
  });
  return job;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> PrefillNode::ChannelFor(const std::string& address) {
  auto it = channels_.find(address);
  if (it != channels_.end()) return it->second;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(address);
  if (!channel.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("PrefillRequest.decode_address: ", channel.status().message()));
  }
  channels_.emplace(address, *channel);
  return channel;
}

void PrefillNode::Post(Task task) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopped_) {
      tasks_.push_back(std::move(task));
      return;
    }
  }
  task(/*stopped=*/true);
}

void PrefillNode::CancelJob(const RequestId& id, uint64_t serial) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second->serial != serial) return;
  FinishJob(*it->second, absl::CancelledError(absl::StrCat("prefill of request ", id.ToString(),
                                                           " cancelled by the caller")));
}

void PrefillNode::OnTransferDone(const RequestId& id, uint64_t serial, KvSender::Result result) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second->serial != serial) return;
  Job& job = *it->second;
  if (result.status.ok() && !job.awaiting_ack) {
    result.status = absl::InternalError("the decode node acknowledged a transfer not yet sent");
  }
  if (result.status.ok() && job.response != nullptr) {
    job.response->set_transfer_ms(Ms(result.done - result.first_write));
    job.response->set_transfer_bytes(result.payload_bytes);
    num_bytes_sent_ += result.payload_bytes;
    num_tokens_sent_ += static_cast<int64_t>(job.prompt.size());
    transfer_us_ += absl::ToInt64Microseconds(result.done - result.first_write);
    tail_us_ += absl::ToInt64Microseconds(result.done - job.prefill_done_wall);
    if (options_.kv_transfer_latency != nullptr) {
      options_.kv_transfer_latency->Observe(absl::ToDoubleSeconds(result.done - result.first_write));
    }
    LogRequestEvent(id.value(), "transfer_end",
                    absl::StrCat("node=", options_.node_id, " chunks=",
                                 result.response.num_chunks_received(), " bytes=",
                                 result.payload_bytes, " decode=", job.request.decode_address(),
                                 " transfer_ms=", Ms(result.done - result.first_write)));
  }
  if (!result.status.ok()) ++num_transfers_failed_;
  FinishJob(job, result.status);
}

void PrefillNode::AddCounters(google::protobuf::Map<std::string, int64_t>* counters) const {
  (*counters)["kv_chunks_sent"] = num_chunks_sent_.load();
  (*counters)["kv_transfers_failed"] = num_transfers_failed_.load();
  (*counters)["faults_injected"] = num_faults_injected_.load();
  (*counters)["kv_bytes_sent"] = num_bytes_sent_.load();
  (*counters)["kv_tokens_sent"] = num_tokens_sent_.load();
  (*counters)["kv_transfer_us"] = transfer_us_.load();
  (*counters)["kv_transfer_tail_us"] = tail_us_.load();
  absl::MutexLock lock(&mu_);
  node::AddPrefixCacheCounters(scheduler_.prefix_cache_stats(), blocks_, counters);
}

void PrefillNode::FinishJob(Job& job, const absl::Status& status) {
  if (!status.ok()) {
    if (job.failure.ok()) job.failure = status;
    job.sender->Abort(std::string(status.message()));
    LogRequestEvent(job.id.value(), "failed",
                    absl::StrCat("node=", options_.node_id, " status=",
                                 absl::StatusCodeToString(status.code()), " reason=\"",
                                 status.message(), "\""));
  }
  if (job.in_scheduler && !status.ok()) {
    // Safe with a plan outstanding: only this node's scheduler allocates blocks, and not before
    // the current step ends; UpdateFromOutput ignores the aborted item.
    (void)scheduler_.Abort(job.id);
    job.in_scheduler = false;
  }
  // A transfer that succeeded can be acknowledged before the worker's UpdateFromOutput for the
  // prompt's last chunk: the request then leaves the scheduler there (kPrefillDone), which
  // registers its last blocks in the prefix cache, rather than by an abort that would drop them.
  if (job.reactor != nullptr) {
    std::exchange(job.reactor, nullptr)->Finish(rpc::ToGrpcStatus(status));
    job.response = nullptr;
  }
  auto it = jobs_.find(job.id);
  if (it != jobs_.end() && it->second.get() == &job) {
    retired_.push_back(std::move(it->second));
    jobs_.erase(it);
  }
  wake_ = true;
}

void PrefillNode::StartDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool PrefillNode::AwaitDrained(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto drained = [this]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return jobs_.empty() && tasks_.empty(); };
  return mu_.AwaitWithTimeout(absl::Condition(&drained), timeout);
}

void PrefillNode::Stop() {
  std::deque<Task> tasks;
  std::vector<std::shared_ptr<Job>> dead;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  worker_.join();
  {
    absl::MutexLock lock(&mu_);
    std::vector<std::shared_ptr<Job>> live;
    for (auto& [id, job] : jobs_) live.push_back(job);
    for (const std::shared_ptr<Job>& job : live) {
      FinishJob(*job, absl::UnavailableError(absl::StrCat("node ", options_.node_id, " stopped")));
    }
    tasks.swap(tasks_);
    dead.swap(retired_);
  }
  for (Task& task : tasks) task(/*stopped=*/true);
  dead.clear();  // joins the senders (outside mu_: their last act takes it)
}

v1::KvCacheEvents PrefillNode::TakeKvEvents(bool snapshot) {
  absl::MutexLock lock(&mu_);
  return node::TakeKvEvents(blocks_, snapshot);
}

v1::NodeLoad PrefillNode::Load() const {
  absl::MutexLock lock(&mu_);
  v1::NodeLoad load;
  load.set_queued_prefill_tokens(scheduler_.num_pending_prefill_tokens());
  load.set_running_sequences(static_cast<int32_t>(scheduler_.num_running()));
  load.set_waiting_sequences(static_cast<int32_t>(scheduler_.num_waiting()));
  load.set_free_kv_blocks(blocks_.num_free());
  load.set_total_kv_blocks(total_blocks_);
  load.set_active_requests(static_cast<int32_t>(jobs_.size()));
  return load;
}

PrefillNode::Snapshot PrefillNode::SnapshotLocked() const {
  Snapshot s;
  s.free_blocks = blocks_.num_free();
  s.num_requests = static_cast<int64_t>(jobs_.size());
  return s;
}

PrefillNode::Snapshot PrefillNode::GetSnapshot() const {
  absl::MutexLock lock(&mu_);
  return SnapshotLocked();
}

bool PrefillNode::AwaitState(const std::function<bool(const Snapshot&)>& pred,
                             absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto holds = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pred(SnapshotLocked()); };
  return mu_.AwaitWithTimeout(absl::Condition(&holds), timeout);
}

}  // namespace duet::prefill
