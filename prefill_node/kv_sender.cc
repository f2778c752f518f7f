#include "prefill_node/kv_sender.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/kv/kv_transfer.h"
#include "common/rpc/status_convert.h"

namespace duet::prefill {

KvSender::KvSender(std::shared_ptr<grpc::Channel> channel, std::string decode_address,
                   std::string request_id, std::string reservation_id,
                   std::function<void(Result)> on_done)
    : stub_(v1::DecodeService::NewStub(channel)),
      decode_address_(std::move(decode_address)),
      request_id_(std::move(request_id)),
      reservation_id_(std::move(reservation_id)),
      on_done_(std::move(on_done)) {
  thread_ = std::thread([this] { Loop(); });
}

KvSender::~KvSender() {
  Abort("the prefill node dropped the request");
  if (thread_.get_id() == std::this_thread::get_id()) {
    thread_.detach();  // called from on_done, the thread's last action
  } else {
    thread_.join();
  }
}

void KvSender::Send(v1::KvChunk chunk) {
  absl::MutexLock lock(&mu_);
  if (last_queued_ || abort_ || failed_.load()) return;
  last_queued_ = chunk.last();
  queue_.push_back(std::move(chunk));
}

void KvSender::Abort(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  if (!abort_) {
    abort_ = true;
    abort_reason_ = reason;
    failed_ = true;
  }
  // A write in flight may be blocked by flow control, and Finish waits for the decode node;
  // cancelling ends both. A thread waiting for chunks sends the abort chunk, then cancels.
  if (busy_) context_.TryCancel();
}

absl::Status KvSender::Describe(const grpc::Status& status) const {
  const grpc::StatusCode code = status.error_code();
  const bool transport = code == grpc::StatusCode::UNAVAILABLE ||
                         code == grpc::StatusCode::DEADLINE_EXCEEDED ||
                         code == grpc::StatusCode::CANCELLED;
  const std::string message = absl::StrCat(
      "KV transfer to decode node ", decode_address_,
      " failed: ", absl::StatusCodeToString(rpc::FromGrpcCode(code)), ": ", status.error_message());
  return transport ? absl::UnavailableError(message) : absl::AbortedError(message);
}

v1::KvChunk MakeKvChunk(const kv::KvChunkHeader& header, std::vector<uint8_t> payload,
                        v1::KvDtype kv_dtype) {
  v1::KvChunk c;
  c.set_request_id(header.request_id);
  c.set_reservation_id(header.reservation_id);
  c.set_seq_no(header.seq_no);
  c.set_layer_begin(header.layer_begin);
  c.set_layer_end(header.layer_end);
  c.set_block_begin(header.block_begin);
  c.set_block_end(header.block_end);
  c.set_num_tokens(header.num_tokens);
  c.set_last(header.last);
  c.set_first_token(header.first_token);
  c.set_checksum(kv::KvChunkChecksum(header, payload));
  c.set_payload(reinterpret_cast<const char*>(payload.data()), payload.size());
  c.set_format_version(kv::kKvChunkChecksumVersion);
  c.set_kv_dtype(kv_dtype);
  return c;
}

void KvSender::Loop() {
  Result result;
  result.first_write = absl::InfinitePast();
  v1::PushKvResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::KvChunk>> writer = stub_->PushKv(&context_, &response);
  bool completed = false;
  while (true) {
    v1::KvChunk chunk;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return abort_ || !queue_.empty(); };
      busy_ = false;
      mu_.Await(absl::Condition(&ready));
      busy_ = true;
      if (abort_) {
        v1::KvChunk abort_chunk;
        abort_chunk.set_request_id(request_id_);
        abort_chunk.set_reservation_id(reservation_id_);
        abort_chunk.set_abort_reason(abort_reason_);
        abort_chunk.set_format_version(kv::kKvChunkChecksumVersion);
        mu_.Unlock();
        writer->Write(abort_chunk);
        context_.TryCancel();
        mu_.Lock();
        break;
      }
      chunk = std::move(queue_.front());
      queue_.pop_front();
    }
    if (result.first_write == absl::InfinitePast()) result.first_write = absl::Now();
    result.payload_bytes += static_cast<int64_t>(chunk.payload().size());
    const bool ok = writer->Write(chunk);
    if (!ok) {
      failed_ = true;
      break;
    }
    if (chunk.last()) {
      completed = writer->WritesDone();
      break;
    }
  }
  const grpc::Status status = writer->Finish();
  result.done = absl::Now();
  bool aborted;
  std::string reason;
  {
    absl::MutexLock lock(&mu_);
    aborted = abort_;
    reason = abort_reason_;
  }
  if (aborted) {
    result.status = absl::CancelledError(
        absl::StrCat("KV transfer to decode node ", decode_address_, " aborted: ", reason));
  } else if (!status.ok()) {
    result.status = Describe(status);
  } else if (!completed) {
    result.status = absl::UnavailableError(absl::StrCat(
        "KV transfer to decode node ", decode_address_, " ended before the last chunk"));
  }
  if (!result.status.ok()) failed_ = true;
  result.response = std::move(response);
  std::function<void(Result)> on_done = std::move(on_done_);
  on_done(std::move(result));  // last: may destroy this sender
}

}  // namespace duet::prefill
