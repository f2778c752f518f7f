// DecodeService.PushKv: the KV of one reservation arriving from a prefill node, chunk by chunk.
//
// One reactor per call. It reads ahead up to kReadAhead chunks into its queue while the worker
// imports earlier ones (so a transfer does not wait one decode step per chunk); one worker task
// at a time drains the queue in order (HandleChunk). Finish is called exactly once, as soon as
// the outcome is known (a read may still be outstanding; it then completes with ok = false).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/request_log.h"
#include "common/kv/kv_payload.h"
#include "common/rpc/status_convert.h"
#include "decode_node/decode_node.h"
#include "node/node_options.h"

namespace duet::decode {

class DecodeNode::PushKvReactor : public grpc::ServerReadReactor<v1::KvChunk> {
 public:
  // Chunks read but not yet imported, at most; also the most one worker task imports before
  // letting a decode step run.
  static constexpr size_t kReadAhead = 4;

  PushKvReactor(DecodeNode* node, v1::PushKvResponse* response) : node_(node), response_(response) {
    reading_ = true;
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    bool read = false, post = false;
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (finished_) return;
      if (ok) {
        last_read_ = incoming_.last() || !incoming_.abort_reason().empty();
        queue_.push_back(std::move(incoming_));
        incoming_.Clear();
      } else {
        eof_ = true;
      }
      read = MaybeRead();
      post = !std::exchange(task_posted_, true);
    }
    if (read) StartRead(&incoming_);
    if (post) node_->Post([this](bool stopped) { Drain(stopped); });
  }

  void OnCancel() override { node_->TransferCancelled(this); }
  void OnDone() override { delete this; }

  v1::PushKvResponse* response() { return response_; }

  // Guarded by node_->mu_.
  std::shared_ptr<Request> request;  // set by the first chunk
  bool cancelled = false;

 private:
  // Imports queued chunks on the worker (at most one such task per reactor at a time).
  void Drain(bool stopped) {
    if (stopped) {
      FinishOnce(absl::UnavailableError("the decode node stopped"));
      return;
    }
    enum class Next { kChunk, kIdle, kYield, kEndOfStream };
    for (size_t handled = 0;; ++handled) {
      v1::KvChunk chunk;
      Next next;
      bool read;
      {
        absl::MutexLock lock(&mu_);
        if (finished_) {
          task_posted_ = false;
          return;
        }
        if (queue_.empty()) {
          next = eof_ ? Next::kEndOfStream : Next::kIdle;
          if (next == Next::kIdle) task_posted_ = false;  // the next read posts again
        } else if (handled == kReadAhead) {
          next = Next::kYield;  // let a decode step run before the rest
        } else {
          chunk = std::move(queue_.front());
          queue_.pop_front();
          next = Next::kChunk;
        }
        read = MaybeRead();
      }
      if (read) StartRead(&incoming_);
      switch (next) {
        case Next::kIdle:
          return;
        case Next::kYield:
          node_->Post([this](bool s) { Drain(s); });
          return;
        case Next::kEndOfStream:
          FinishOnce(node_->EndOfTransfer(this));
          return;
        case Next::kChunk:
          break;
      }
      bool done = false;
      const absl::Status status = node_->HandleChunk(this, chunk, &done);
      if (!status.ok() || done) {
        FinishOnce(status);
        return;
      }
    }
  }

  // Whether to start another read now; marks it started. REQUIRES: mu_ held.
  bool MaybeRead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (reading_ || eof_ || last_read_ || finished_ || queue_.size() >= kReadAhead) return false;
    reading_ = true;
    return true;
  }

  void FinishOnce(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (std::exchange(finished_, true)) return;
      queue_.clear();
      task_posted_ = false;
    }
    Finish(rpc::ToGrpcStatus(status));
  }

  DecodeNode* const node_;
  v1::PushKvResponse* const response_;
  absl::Mutex mu_;        // never held while calling into the node
  v1::KvChunk incoming_;  // the outstanding read's target (only gRPC touches it meanwhile)
  std::deque<v1::KvChunk> queue_ ABSL_GUARDED_BY(mu_);
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool eof_ ABSL_GUARDED_BY(mu_) = false;        // the client half-closed (or the call ended)
  bool last_read_ ABSL_GUARDED_BY(mu_) = false;  // a `last` or abort chunk was read
  bool task_posted_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

namespace {

kv::KvChunkHeader HeaderOf(const v1::KvChunk& c) {
  kv::KvChunkHeader h;
  h.request_id = c.request_id();
  h.reservation_id = c.reservation_id();
  h.seq_no = c.seq_no();
  h.layer_begin = c.layer_begin();
  h.layer_end = c.layer_end();
  h.block_begin = c.block_begin();
  h.block_end = c.block_end();
  h.num_tokens = c.num_tokens();
  h.last = c.last();
  h.first_token = c.first_token();
  return h;
}

absl::Span<const uint8_t> PayloadOf(const v1::KvChunk& c) {
  return {reinterpret_cast<const uint8_t*>(c.payload().data()), c.payload().size()};
}

}  // namespace

grpc::ServerReadReactor<v1::KvChunk>* DecodeNode::PushKv(grpc::CallbackServerContext* /*context*/,
                                                         v1::PushKvResponse* response) {
  return new PushKvReactor(this, response);
}

absl::Status DecodeNode::EndOfTransfer(PushKvReactor* reactor) {
  absl::MutexLock lock(&mu_);
  if (reactor->cancelled) return absl::CancelledError("PushKv cancelled by the prefill node");
  if (reactor->request == nullptr) {
    return absl::FailedPreconditionError("the PushKv stream ended before its first KvChunk");
  }
  Request& r = *reactor->request;
  const absl::Status status = absl::FailedPreconditionError(absl::StrCat(
      "the PushKv stream of reservation '", r.reservation_id, "' (request '", r.id.ToString(),
      "') ended after ", r.receiver->chunks_received(), " chunks without its last chunk"));
  if (r.phase == Phase::kReserved) FailReserved(r, status);
  return status;
}

void DecodeNode::TransferCancelled(PushKvReactor* reactor) {
  absl::MutexLock lock(&mu_);
  reactor->cancelled = true;
  if (reactor->request != nullptr && reactor->request->phase == Phase::kReserved) {
    FailReserved(*reactor->request,
                 absl::CancelledError("the prefill node cancelled the KV transfer"));
  }
}

absl::Status DecodeNode::HandleChunk(PushKvReactor* reactor, const v1::KvChunk& chunk, bool* done) {
  absl::MutexLock lock(&mu_);
  return HandleChunkLocked(reactor, chunk, done);
}

absl::Status DecodeNode::HandleChunkLocked(PushKvReactor* reactor, const v1::KvChunk& c,
                                           bool* done) {
  if (reactor->request == nullptr) {
    const kv::Reservation* res = reservations_.Find(c.reservation_id());
    if (res == nullptr) {
      return absl::NotFoundError(absl::StrCat("reservation '", c.reservation_id(), "' (request '",
                                              c.request_id(),
                                              "') is unknown, expired or released"));
    }
    std::shared_ptr<Request> r = Find(res->request_id);
    if (r == nullptr || r->phase != Phase::kReserved) {
      return absl::NotFoundError(
          absl::StrCat("reservation '", c.reservation_id(), "' has no request waiting for KV"));
    }
    if (r->transfer_started) {
      const absl::Status status = absl::FailedPreconditionError(
          absl::StrCat("a second PushKv for reservation '", c.reservation_id(), "' of request '",
                       r->id.ToString(), "': its transfer had already started"));
      FailReserved(*r, status);
      return status;
    }
    r->transfer_started = true;
    const kv::KvLayout& layout = engine_->kv_layout();
    const int64_t num_tokens = r->num_prompt_tokens;
    kv::TransferSpec spec;
    spec.request_id = r->id.value();
    spec.reservation_id = r->reservation_id;
    spec.num_layers = static_cast<int32_t>(layout.num_layers);
    spec.num_blocks = static_cast<int32_t>(kv::NumBlocksFor(layout, num_tokens));
    spec.num_tokens = num_tokens;
    spec.num_present_blocks = static_cast<int32_t>(r->num_present_blocks);
    spec.expected_payload_bytes = [layout, num_tokens](int32_t lb, int32_t le, int32_t bb,
                                                       int32_t be) {
      return kv::KvPayloadBytes(layout, num_tokens, lb, le, bb, be);
    };
    r->receiver = std::make_unique<kv::KvTransferReceiver>(std::move(spec));
    reactor->request = std::move(r);
  }
  Request& r = *reactor->request;
  if (r.phase != Phase::kReserved || reservations_.Find(r.reservation_id) == nullptr) {
    return absl::NotFoundError(absl::StrCat("reservation '", r.reservation_id, "' of request '",
                                            r.id.ToString(), "' expired or was released"));
  }
  if (reactor->cancelled) {
    const absl::Status status = absl::CancelledError("PushKv cancelled by the prefill node");
    FailReserved(r, status);
    return status;
  }
  if (!c.abort_reason().empty()) {
    FailReserved(r, absl::AbortedError(absl::StrCat("the prefill node aborted the KV transfer: ",
                                                    c.abort_reason())));
    return absl::AbortedError(absl::StrCat("transfer aborted by the sender: ", c.abort_reason()));
  }
  absl::Status status;
  if (c.format_version() != kv::kKvChunkChecksumVersion) {
    status = absl::InvalidArgumentError(absl::StrCat("KvChunk.format_version ", c.format_version(),
                                                     " is not supported (this node reads version ",
                                                     kv::kKvChunkChecksumVersion, ")"));
  } else if (c.kv_dtype() != kv_dtype()) {
    status = absl::InvalidArgumentError(
        absl::StrCat("KvChunk.kv_dtype ", v1::KvDtype_Name(c.kv_dtype()),
                     " differs from this node's ", v1::KvDtype_Name(kv_dtype())));
  }
  if (status.ok()) status = r.receiver->Accept(HeaderOf(c), PayloadOf(c), c.checksum());
  if (!status.ok()) {
    FailReserved(r, status);
    return status;
  }
  const kv::Reservation* res = reservations_.Find(r.reservation_id);
  const kv::KvRect rect{c.layer_begin(), c.layer_end(), c.block_begin(), c.block_end()};
  status = engine_->ImportKv(SequenceRef{res->blocks, 0, r.tail_slot}, r.num_prompt_tokens, rect,
                             PayloadOf(c));
  if (status.ok()) status = reservations_.Touch(r.reservation_id);
  if (status.ok()) ++num_chunks_accepted_;
  if (status.ok() && r.receiver->complete()) {
    LogRequestEvent(r.id.value(), "kv_received",
                    absl::StrCat("node=", options_.node_id, " chunks=",
                                 r.receiver->chunks_received(), " tokens=", r.num_prompt_tokens));
    status = StartDecoding(r, c);
    if (status.ok()) {
      reactor->response()->set_num_chunks_received(
          static_cast<int64_t>(r.receiver->chunks_received()));
      reactor->response()->set_num_blocks_received(
          kv::NumBlocksFor(engine_->kv_layout(), r.num_prompt_tokens));
      *done = true;
    }
    return status;
  }
  if (!status.ok()) FailReserved(r, status);
  return status;
}

absl::Status DecodeNode::StartDecoding(Request& r, const v1::KvChunk& last) {
  const int32_t first = last.first_token();
  if (first < 0 || first >= vocab_size_) {
    const absl::Status status = absl::InvalidArgumentError(absl::StrCat(
        "KvChunk.first_token ", first, " is outside the vocab [0, ", vocab_size_, ")"));
    FailReserved(r, status);
    return status;
  }
  absl::StatusOr<std::vector<int32_t>> blocks = reservations_.Claim(r.reservation_id);
  if (!blocks.ok()) {
    FailReserved(r, blocks.status());
    return blocks.status();
  }
  const int32_t tail_slot = std::exchange(r.tail_slot, -1);
  const node::StopKind stop = r.completion.Append(first);
  std::vector<v1::TokenLogprobs> logprobs;
  if (r.completion.num_logprobs() > 0 && last.has_first_token_logprobs()) {
    logprobs.push_back(last.first_token_logprobs());
  }
  r.sink->AddTokens({&first, 1}, logprobs);
  const int32_t slot[] = {tail_slot};
  if (stop != node::StopKind::kNone) {
    (void)blocks_.Release(*blocks);
    (void)tail_slots_.Release(slot);
    r.sink->Finish(node::ToFinishReason(stop));
    LogRequestEvent(r.id.value(), "finished",
                    absl::StrCat("node=", options_.node_id, " tokens=1 reason=first_token_stops"));
    MarkDone(r);
    return absl::OkStatus();
  }
  sched::RequestSpec spec;
  spec.id = r.id;
  spec.prompt = r.prompt.empty() ? std::vector<int32_t>(static_cast<size_t>(r.num_prompt_tokens), 0)
                                 : r.prompt;
  spec.output = {first};
  spec.max_tokens = r.completion.sampling().max_tokens;
  spec.cache_salt = r.cache_salt;
  spec.cacheable = !r.prompt.empty();
  std::vector<int32_t> table = *blocks;
  if (absl::Status s = scheduler_.AddRunning(std::move(spec), std::move(table), tail_slot);
      !s.ok()) {
    (void)blocks_.Release(*blocks);
    (void)tail_slots_.Release(slot);
    r.sink->Fail(s);
    MarkDone(r);
    return s;
  }
  r.phase = Phase::kRunning;
  wake_ = true;
  return absl::OkStatus();
}

void DecodeNode::DropReserved(Request& r, const absl::Status& status) {
  if (r.phase != Phase::kReserved) return;
  (void)reservations_.Release(r.reservation_id);  // NOT_FOUND when a sweep freed it already
  if (r.tail_slot >= 0) {
    const int32_t slot[] = {std::exchange(r.tail_slot, -1)};
    (void)tail_slots_.Release(slot);
  }
  LogRequestEvent(r.id.value(), "failed",
                  absl::StrCat("node=", options_.node_id, " reservation=", r.reservation_id,
                               " status=", absl::StatusCodeToString(status.code()), " reason=\"",
                               status.message(), "\""));
  r.sink->Fail(status);
  MarkDone(r);
}

void DecodeNode::FailReserved(Request& r, const absl::Status& status) {
  ++num_transfers_failed_;
  if (status.code() == absl::StatusCode::kDataLoss) ++num_checksum_errors_;
  DropReserved(r,
               absl::Status(status.code(), absl::StrCat("KV transfer for request ", r.id.ToString(),
                                                        " failed: ", status.message())));
}

}  // namespace duet::decode
