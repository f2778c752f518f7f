// The prefill node's worker: runs posted tasks (admissions), then the scheduler's steps. Each
// prefill chunk is one Engine::Prefill with a PrefillObserver that exports the KV cells the
// finished layers made final and hands them to the request's KvSender while the next layers
// compute.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/request_log.h"
#include "common/base/status.h"
#include "common/kv/kv_payload.h"
#include "prefill_node/prefill_node.h"

namespace duet::prefill {

void PrefillNode::WorkerLoop() {
  bool idle = false;  // the last step had nothing to run: wait for an event before the next
  while (true) {
    std::deque<Task> tasks;
    std::vector<std::shared_ptr<Job>> dead;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this, idle]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopped_ || wake_ || !tasks_.empty() || !retired_.empty() ||
               (!idle && scheduler_.has_requests());
      };
      mu_.Await(absl::Condition(&ready));
      if (stopped_) return;
      wake_ = false;
      tasks.swap(tasks_);
      dead.swap(retired_);
    }
    dead.clear();  // joins finished senders, outside mu_
    for (Task& task : tasks) task(/*stopped=*/false);
    idle = !RunStep();
  }
}

v1::KvChunk PrefillNode::MakeChunk(const Job& job, const kv::ChunkRect& rect,
                                   std::vector<uint8_t> payload, int32_t first_token) const {
  const int64_t num_tokens = static_cast<int64_t>(job.prompt.size());
  const kv::KvChunkHeader header = kv::MakeChunkHeader(job.id.value(), job.request.reservation_id(),
                                                       num_tokens, rect, first_token);
  ++num_chunks_sent_;
  if (!payload.empty() && num_faults_injected_.load() < options_.test_corrupt_kv_chunks) {
    // Corrupt after the checksum is computed: what a bad link or buggy peer would deliver.
    v1::KvChunk c = MakeKvChunk(header, payload, kv_dtype());
    ++num_faults_injected_;
    (*c.mutable_payload())[c.payload().size() / 2] ^= 0x5a;
    spdlog::warn("prefill {}: test fault: corrupted KvChunk {} of request {}", options_.node_id,
                 header.seq_no, job.id.ToString());
    return c;
  }
  return MakeKvChunk(header, std::move(payload), kv_dtype());
}

absl::Status PrefillNode::RunChunk(Job& job, const sched::PrefillChunk& chunk) {
  if (job.sender->failed()) return absl::AbortedError("the KV transfer stopped");
  const bool admission_chunk = !job.started;
  if (!job.started) {
    job.started = true;
    job.first_chunk = clock_->Now();
    LogRequestEvent(job.id.value(), "prefill_start",
                    absl::StrCat("node=", options_.node_id, " prompt_tokens=", job.prompt.size(),
                                 " cached_tokens=", chunk.num_cached,
                                 " queue_ms=",
                                 absl::ToDoubleMilliseconds(job.first_chunk - job.arrival)));
  }
  const kv::KvLayout& layout = engine_->kv_layout();
  const int64_t n = static_cast<int64_t>(job.prompt.size());
  const SequenceRef seq{chunk.block_table, chunk.num_cached, chunk.tail_slot};
  // Export `rects` of the KV of positions [0, tokens) and hand them to the sender; the `last`
  // rectangle is held for the first token.
  auto send = [&](const std::vector<kv::ChunkRect>& rects, int64_t tokens) -> absl::Status {
    for (const kv::ChunkRect& rect : rects) {
      absl::StatusOr<std::vector<uint8_t>> payload = engine_->ExportKv(
          seq, tokens,
          kv::KvRect{rect.layer_begin, rect.layer_end, rect.block_begin, rect.block_end});
      if (!payload.ok()) return payload.status();
      if (rect.last) {
        job.held_last = rect;  // goes out with the first token
        job.held_payload = std::move(*payload);
      } else {
        job.sender->Send(MakeChunk(job, rect, std::move(*payload), 0));
      }
    }
    return absl::OkStatus();
  };
  // (Blocks the decode node holds already are never planned: the planner skips them.)
  if (admission_chunk && chunk.num_cached > 0) {
    // The admission chunk starts after a cached prefix (full blocks, final in every layer):
    // send that KV now, while the chunk computes the rest.
    job.cached_tokens = chunk.num_cached;
    absl::StatusOr<std::vector<kv::ChunkRect>> rects = job.planner.OnBlocksReady(
        static_cast<int32_t>(layout.num_layers),
        static_cast<int32_t>(chunk.num_cached / layout.block_size));
    if (!rects.ok()) return rects.status();
    DUET_RETURN_IF_ERROR(send(*rects, chunk.num_cached));
  }
  PrefillObserver observer;
  observer.layers_per_group = layers_per_group_;
  observer.on_layers_done = [&](const PrefillProgress& p) -> absl::Status {
    if (job.sender->failed()) return absl::AbortedError("the KV transfer stopped");
    // A chunk ending inside a block leaves that block for a later chunk (or the prompt's end).
    const int64_t tokens = std::min(p.num_tokens, n);
    const int32_t ready_blocks =
        tokens >= n ? job.planner.num_blocks() : static_cast<int32_t>(tokens / layout.block_size);
    absl::StatusOr<std::vector<kv::ChunkRect>> rects =
        job.planner.OnBlocksReady(static_cast<int32_t>(p.layers_done), ready_blocks);
    if (!rects.ok()) return rects.status();
    return send(*rects, tokens);
  };
  absl::StatusOr<std::vector<float>> logits =
      engine_->Prefill(seq, chunk.tokens, /*all_logits=*/false, &observer);
  if (!logits.ok()) return logits.status();
  if (!chunk.completes_prompt) return absl::OkStatus();

  job.prefill_done = clock_->Now();
  job.prefill_done_wall = absl::Now();
  LogRequestEvent(job.id.value(), "prefill_end",
                  absl::StrCat("node=", options_.node_id, " prefill_ms=",
                               absl::ToDoubleMilliseconds(job.prefill_done - job.first_chunk)));
  if (!job.held_last.has_value()) {
    return absl::InternalError(absl::StrCat("request ", job.id.ToString(),
                                            ": the KV transfer planner never planned its last "
                                            "chunk"));
  }
  const SampleResult first = job.completion.Sample(*logits);
  v1::KvChunk last = MakeChunk(job, *job.held_last, std::move(job.held_payload), first.token);
  if (job.completion.num_logprobs() > 0) {
    *last.mutable_first_token_logprobs() = node::ToProto(first);
  }
  {
    absl::MutexLock lock(&mu_);
    if (job.response != nullptr) {
      job.response->set_first_token(first.token);
      if (last.has_first_token_logprobs()) {
        *job.response->mutable_first_token_logprobs() = last.first_token_logprobs();
      }
      job.response->set_num_prompt_tokens(n);
      job.response->set_cached_prompt_tokens(job.cached_tokens);
      job.response->set_queue_ms(absl::ToDoubleMilliseconds(job.first_chunk - job.arrival));
      job.response->set_prefill_ms(absl::ToDoubleMilliseconds(job.prefill_done - job.first_chunk));
    }
    job.awaiting_ack = true;
  }
  job.sender->Send(std::move(last));
  return absl::OkStatus();
}

bool PrefillNode::RunStep() {
  sched::SchedulerOutput plan;
  std::vector<std::shared_ptr<Job>> jobs;
  {
    absl::MutexLock lock(&mu_);
    if (!scheduler_.has_requests()) return false;
    plan = scheduler_.Schedule();
    for (const sched::PrefillChunk& c : plan.prefills) {
      auto it = jobs_.find(c.id);
      jobs.push_back(it == jobs_.end() ? nullptr : it->second);
    }
  }
  if (options_.prefill_batch_tokens != nullptr && !plan.prefills.empty()) {
    int64_t tokens = 0;
    for (const sched::PrefillChunk& c : plan.prefills) tokens += static_cast<int64_t>(c.tokens.size());
    options_.prefill_batch_tokens->Observe(static_cast<double>(tokens));
  }
  for (size_t i = 0; i < plan.prefills.size(); ++i) {
    if (jobs[i] == nullptr) continue;
    Job& job = *jobs[i];
    const absl::Status status = RunChunk(job, plan.prefills[i]);
    if (status.ok()) continue;
    absl::MutexLock lock(&mu_);
    if (job.sender->failed()) {
      // The transfer failed (or was aborted): free the blocks now; the sender's report (or the
      // cancellation) ends the RPC with the decode node's status.
      if (job.in_scheduler) {
        (void)scheduler_.Abort(job.id);
        job.in_scheduler = false;
      }
    } else {
      spdlog::error("prefill {}: request {} failed: {}", options_.node_id, job.id.ToString(),
                    status.ToString());
      FinishJob(job, status);
    }
  }
  absl::MutexLock lock(&mu_);
  if (absl::Status s = scheduler_.UpdateFromOutput({}); !s.ok()) {
    spdlog::critical("prefill {}: the scheduler rejected its own step's results: {}",
                     options_.node_id, s.ToString());
    std::abort();
  }
  for (const sched::FinishedRequest& f : scheduler_.TakeFinished()) {
    auto it = jobs_.find(f.id);
    if (it == jobs_.end()) continue;
    Job& job = *it->second;
    job.in_scheduler = false;
    if (f.reason != sched::FinishReason::kPrefillDone) {
      FinishJob(job, absl::ResourceExhaustedError(
                         absl::StrCat("request ", f.id.ToString(), ": ", f.detail)));
    }
  }
  return !plan.empty();
}

}  // namespace duet::prefill
