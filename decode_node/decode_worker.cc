// The decode node's worker thread: runs posted tasks (KV chunks, aborts, admissions), expires
// leases, and runs the scheduler's steps on the engine.
//
// Per step: Schedule() under mu_; the engine work outside it (Engine::Prefill per colocated
// chunk, one Engine::DecodeStep -- or DecodeStepGreedy when every sequence in the step takes
// the ArgMax -- for all decode entries); sampling and stop checks per request
// (node/completion.h); tokens go to the request's sink; UpdateFromOutput and the finished
// requests' last events under mu_.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/request_log.h"
#include "common/rpc/status_convert.h"
#include "decode_node/decode_node.h"

namespace duet::decode {
namespace {

sched::FinishReason SchedulerReason(node::StopKind stop) {
  switch (stop) {
    case node::StopKind::kNone:
      return sched::FinishReason::kNone;
    case node::StopKind::kLength:
      return sched::FinishReason::kLength;
    default:
      return sched::FinishReason::kStop;
  }
}

}  // namespace

void DecodeNode::WorkerLoop() {
  bool idle = false;  // the last step had nothing to run: wait for an event before the next
  while (true) {
    std::deque<Task> tasks;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this, idle]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopped_ || wake_ || !tasks_.empty() || (!idle && scheduler_.has_requests());
      };
      if (!ready()) mu_.AwaitWithTimeout(absl::Condition(&ready), IdleWait());
      if (stopped_) return;
      wake_ = false;
      tasks.swap(tasks_);
    }
    for (Task& task : tasks) task(/*stopped=*/false);
    ExpireLeases();
    idle = !RunStep();
  }
}

absl::Duration DecodeNode::IdleWait() const {
  const absl::Time now = clock_->Now();
  absl::Time next = now + absl::Hours(1);
  for (const auto& [id, r] : requests_) {
    if (r->phase == Phase::kReserved) {
      const kv::Reservation* res = reservations_.Find(r->reservation_id);
      next = std::min(next, res != nullptr ? res->expires_at : now);
    } else if (r->phase == Phase::kDone) {
      next = std::min(next, r->done_at + options_.unclaimed_retention);
    }
  }
  return std::max(next - now, absl::ZeroDuration());
}

void DecodeNode::ExpireLeases() {
  absl::MutexLock lock(&mu_);
  for (const kv::ExpiredReservation& e : reservations_.ExpireDue()) {
    std::shared_ptr<Request> r = Find(e.request_id);
    if (r == nullptr || r->reservation_id != e.reservation_id) continue;
    ++num_leases_expired_;
    DropReserved(*r, absl::AbortedError(absl::StrCat("reservation '", e.reservation_id,
                                                     "' of request ", e.request_id.ToString(),
                                                     " expired: its KV did not arrive in time")));
  }
  const absl::Time now = clock_->Now();
  std::vector<RequestId> stale;
  for (const auto& [id, r] : requests_) {
    if (r->phase == Phase::kDone && now - r->done_at >= options_.unclaimed_retention) {
      stale.push_back(id);
    }
  }
  for (const RequestId& id : stale) requests_.erase(id);
}

void DecodeNode::MarkDone(Request& r) {
  if (options_.speculator != nullptr && r.phase == Phase::kRunning) {
    spec_released_.push_back(r.serial);
  }
  r.phase = Phase::kDone;
  r.done_at = clock_->Now();
  if (!r.stream_opened) return;  // kept for its StreamTokens to collect
  const RequestId id = r.id;
  if (std::shared_ptr<Request> current = Find(id); current.get() == &r) requests_.erase(id);
}

void DecodeNode::AbortRunning(Request& r, const absl::Status& status) {
  if (r.phase != Phase::kRunning) return;
  (void)scheduler_.Abort(r.id);  // NOT_FOUND when it is not queued yet (Run) or just finished
  r.sink->Fail(status);
  MarkDone(r);
}

sched::RequestOutput DecodeNode::Emit(Request& r, int32_t token,
                                      const std::optional<v1::TokenLogprobs>& logprobs) {
  const node::StopKind stop = r.completion.Append(token);
  if (logprobs.has_value()) {
    r.sink->AddTokens({&token, 1}, {&*logprobs, 1});
  } else {
    r.sink->AddTokens({&token, 1}, {});
  }
  return sched::RequestOutput{r.id, token, SchedulerReason(stop)};
}

sched::RequestOutput DecodeNode::SampleAndEmit(Request& r, absl::Span<const float> logits) {
  const SampleResult s = r.completion.Sample(logits);
  std::optional<v1::TokenLogprobs> logprobs;
  if (r.completion.num_logprobs() > 0) logprobs = node::ToProto(s);
  return Emit(r, s.token, logprobs);
}

sched::RequestOutput DecodeNode::EmitSeveral(Request& r, absl::Span<const int32_t> tokens) {
  sched::RequestOutput out{r.id, std::nullopt, sched::FinishReason::kNone, {}};
  size_t emitted = 0;
  while (emitted < tokens.size()) {
    const int32_t token = tokens[emitted++];
    const node::StopKind stop = r.completion.Append(token);
    if (stop != node::StopKind::kNone || emitted == tokens.size()) {
      out.token = token;
      out.finish = SchedulerReason(stop);
      break;
    }
    out.accepted_drafts.push_back(token);
  }
  r.sink->AddTokens(tokens.subspan(0, emitted), {});
  return out;
}

void DecodeNode::SetLookaheads() {
  node::Speculator* spec = options_.speculator.get();
  for (uint64_t key : std::exchange(spec_released_, {})) spec->Release(key);
  const int64_t batch = scheduler_.num_running();
  for (const auto& [id, r] : requests_) {
    if (r->phase != Phase::kRunning) continue;
    const bool eligible = r->speculate && r->completion.num_logprobs() == 0;
    // NOT_FOUND for a request not in the scheduler yet (Run queued as a task): harmless.
    (void)scheduler_.SetLookahead(id, eligible ? spec->Lookahead(r->serial, batch) : 0);
  }
}

void DecodeNode::RunDecodes(const sched::SchedulerOutput& plan,
                            const std::vector<std::shared_ptr<Request>>& decoding,
                            sched::StepResult* result) {
  const int64_t vocab = vocab_size_;
  std::vector<DecodeItem> items;
  items.reserve(plan.decodes.size());
  bool greedy = true;
  bool speculative = false;
  for (size_t i = 0; i < plan.decodes.size(); ++i) {
    const sched::DecodeEntry& d = plan.decodes[i];
    items.push_back(DecodeItem{SequenceRef{d.block_table, d.num_cached, d.tail_slot}, d.token});
    greedy = greedy && decoding[i]->completion.sampling().greedy_argmax();
    speculative = speculative || d.num_lookahead > 0;
  }
  if (options_.test_step_delay > absl::ZeroDuration()) absl::SleepFor(options_.test_step_delay);
  if (options_.decode_batch_size != nullptr) {
    options_.decode_batch_size->Observe(static_cast<double>(items.size()));
  }
  absl::Status status;
  bool done = false;
  if (speculative && options_.speculator != nullptr) {
    std::vector<std::vector<int32_t>> contexts(items.size());
    std::vector<node::Speculator::Item> spec_items;
    for (size_t i = 0; i < items.size(); ++i) {
      const Request& r = *decoding[i];
      if (plan.decodes[i].num_lookahead > 0) {  // only a drafting sequence's proposer reads it
        contexts[i] = r.prompt;
        const std::vector<int32_t>& generated = r.completion.generated();
        contexts[i].insert(contexts[i].end(), generated.begin(), generated.end());
      }
      spec_items.push_back({r.serial, items[i].seq, items[i].token, contexts[i],
                            plan.decodes[i].num_lookahead, &r.completion});
    }
    absl::StatusOr<std::optional<std::vector<node::Speculator::Outcome>>> outcomes =
        options_.speculator->Step(*engine_, spec_items);
    status = outcomes.status();
    if (outcomes.ok() && outcomes->has_value()) {
      done = true;
      for (size_t i = 0; i < items.size(); ++i) {
        const node::Speculator::Outcome& o = (**outcomes)[i];
        result->outputs.push_back(o.logits.empty() ? EmitSeveral(*decoding[i], o.tokens)
                                                   : SampleAndEmit(*decoding[i], o.logits));
      }
      absl::MutexLock lock(&mu_);
      spec_stats_ = options_.speculator->stats();
    }
  }
  if (status.ok() && !done) {
    const absl::Time start = absl::Now();
    if (greedy) {
      absl::StatusOr<std::vector<int32_t>> tokens = engine_->DecodeStepGreedy(items);
      status = tokens.status();
      for (size_t i = 0; status.ok() && i < items.size(); ++i) {
        result->outputs.push_back(Emit(*decoding[i], (*tokens)[i], std::nullopt));
      }
    } else {
      absl::StatusOr<std::vector<float>> logits = engine_->DecodeStep(items);
      status = logits.status();
      for (size_t i = 0; status.ok() && i < items.size(); ++i) {
        result->outputs.push_back(SampleAndEmit(
            *decoding[i], absl::Span<const float>(logits->data() + static_cast<int64_t>(i) * vocab,
                                                  static_cast<size_t>(vocab))));
      }
    }
    if (status.ok() && options_.speculator != nullptr) {
      options_.speculator->ObservePlainStep(static_cast<int64_t>(items.size()),
                                            absl::ToDoubleSeconds(absl::Now() - start));
    }
  }
  if (!status.ok()) {
    spdlog::error("decode {}: decode step of {} sequences failed: {}", options_.node_id,
                  items.size(), status.ToString());
    for (size_t i = 0; i < items.size(); ++i) {
      decoding[i]->error =
          absl::Status(status.code(), absl::StrCat("decode step failed: ", status.message()));
      result->outputs.push_back({plan.decodes[i].id, std::nullopt, sched::FinishReason::kAborted, {}});
    }
  }
}

bool DecodeNode::RunStep() {
  sched::SchedulerOutput plan;
  std::vector<std::shared_ptr<Request>> decoding, prefilling;
  {
    absl::MutexLock lock(&mu_);
    if (!scheduler_.has_requests()) return false;
    if (options_.speculator != nullptr) SetLookaheads();
    plan = scheduler_.Schedule();
    for (const sched::Preempted& p : plan.preempted) {
      std::shared_ptr<Request> r = Find(p.id);
      if (r == nullptr) continue;
      // The router resumes it elsewhere (or here): prefill of prompt + output, decode on.
      LogRequestEvent(p.id.value(), "preempted",
                      absl::StrCat("node=", options_.node_id, " tokens=", p.num_output_tokens,
                                   " reason=kv_pool_exhausted"));
      r->sink->Preempt();
      MarkDone(*r);
    }
    for (const sched::DecodeEntry& d : plan.decodes) decoding.push_back(Find(d.id));
    for (const sched::PrefillChunk& c : plan.prefills) prefilling.push_back(Find(c.id));
  }
  const bool progressed = !plan.empty() || !plan.preempted.empty();
  sched::StepResult result;

  for (size_t i = 0; i < plan.prefills.size(); ++i) {
    const sched::PrefillChunk& c = plan.prefills[i];
    Request& r = *prefilling[i];
    // The admission chunk of a prompt whose prefix was cached starts past it.
    if (c.num_cached > 0 && !r.prefill_started) r.sink->set_cached_prompt_tokens(c.num_cached);
    r.prefill_started = true;
    absl::StatusOr<std::vector<float>> logits =
        engine_->Prefill(SequenceRef{c.block_table, c.num_cached, c.tail_slot}, c.tokens);
    if (!logits.ok()) {
      r.error = absl::Status(logits.status().code(),
                             absl::StrCat("prefill failed: ", logits.status().message()));
      result.outputs.push_back({c.id, std::nullopt, sched::FinishReason::kAborted, {}});
    } else if (c.completes_prompt) {
      result.outputs.push_back(SampleAndEmit(r, *logits));
    }
  }

  if (!plan.decodes.empty()) RunDecodes(plan, decoding, &result);

  absl::MutexLock lock(&mu_);
  if (absl::Status s = scheduler_.UpdateFromOutput(result); !s.ok()) {
    spdlog::critical("decode {}: the scheduler rejected its own step's results: {}",
                     options_.node_id, s.ToString());
    std::abort();
  }
  for (const sched::FinishedRequest& f : scheduler_.TakeFinished()) {
    std::shared_ptr<Request> r = Find(f.id);
    if (r == nullptr) continue;
    switch (f.reason) {
      case sched::FinishReason::kStop:
        r->sink->Finish(node::ToFinishReason(r->completion.stop()));
        break;
      case sched::FinishReason::kLength:
        r->sink->Finish(v1::FINISH_REASON_LENGTH);
        break;
      case sched::FinishReason::kResourceExhausted:
        r->sink->Fail(absl::ResourceExhaustedError(f.detail));
        break;
      default:
        r->sink->Fail(r->error.ok()
                          ? absl::AbortedError(absl::StrCat(
                                "request ended: ", std::string(sched::FinishReasonName(f.reason))))
                          : r->error);
        break;
    }
    LogRequestEvent(f.id.value(), "finished",
                    absl::StrCat("node=", options_.node_id, " tokens=",
                                 r->completion.generated().size(), " reason=",
                                 std::string(sched::FinishReasonName(f.reason))));
    MarkDone(*r);
  }
  return progressed;
}

}  // namespace duet::decode
