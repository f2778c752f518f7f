// A request's token events on their way to a server-streaming call (DecodeService.StreamTokens
// and Run): a TokenSink buffers what the node's worker produces, from the moment the request
// exists, and a TokenStreamReactor writes it out once the call is open.
//
// Events are coalesced: tokens added while a write is in flight go out together in the next
// TokenEvent. The stream ends in one of two ways:
//   - Finish(reason): the last event carries finish_reason and usage; status OK.
//   - Fail(status): if any token was added, a last event with FINISH_REASON_ERROR and usage
//     (and every token not yet written) goes out first; then the call ends with `status`.
// A client that cancels ends the stream with CANCELLED and calls the reactor's on_cancel
// callback (once, unless the sink had already finished), which is how the node learns that
// the request is to be aborted.
//
// Thread safety: TokenSink is thread-safe; its methods never call back into the caller and are
// safe to call while holding the caller's own locks (gRPC operations start after the sink's
// mutex is released and never run reactions inline into it).
#ifndef DUET_NODE_TOKEN_STREAM_H_
#define DUET_NODE_TOKEN_STREAM_H_

#include <grpcpp/support/server_callback.h>

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "duet/v1/internal.pb.h"

namespace duet::node {

class TokenStreamReactor;

class TokenSink {
 public:
  // Usage of the last event: prompt_tokens and cached_prompt_tokens as given, completion_tokens
  // = every token added.
  TokenSink(int64_t num_prompt_tokens, int64_t cached_prompt_tokens);

  // Appends completion tokens; `logprobs` is empty or has one entry per token. Ignored once the
  // stream is finishing.
  void AddTokens(absl::Span<const int32_t> tokens, absl::Span<const v1::TokenLogprobs> logprobs);
  // Ends the stream normally (see the file comment). Only the first Finish/Fail counts.
  void Finish(v1::FinishReason reason);
  // Ends the stream with an error. REQUIRES: !status.ok(). Only the first Finish/Fail counts.
  void Fail(const absl::Status& status);
  // Ends the stream for a preempted request: a last event with `preempted` (and usage), then
  // status OK. Counts as Finish/Fail.
  void Preempt();

  // Finish or Fail was called (or the client cancelled).
  bool finishing() const;
  // A reactor was ever attached (StreamTokens opened).
  bool attached() const;
  int64_t num_tokens() const;
  // A colocated node learns at admission how much of the prompt its prefix cache held.
  void set_cached_prompt_tokens(int64_t n);

 private:
  friend class TokenStreamReactor;
  enum class Action { kNone, kWrite, kFinish };

  // FAILED_PRECONDITION when a reactor was attached before.
  absl::Status Attach(TokenStreamReactor* reactor);
  // The reactor's callbacks. OnCancelled returns true when the stream was still live.
  void OnWriteDone(bool ok);
  bool OnCancelled();
  void Detach();

  // Picks the next gRPC operation; *reactor is where to start it (outside mu_).
  Action Next(TokenStreamReactor** reactor) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run(Action action, TokenStreamReactor* reactor);
  void Close(grpc::Status status, bool final_event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddUsage(v1::TokenEvent* event) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int64_t num_prompt_tokens_;
  mutable absl::Mutex mu_;
  int64_t cached_prompt_tokens_ ABSL_GUARDED_BY(mu_);
  TokenStreamReactor* reactor_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool attached_ ABSL_GUARDED_BY(mu_) = false;
  v1::TokenEvent pending_ ABSL_GUARDED_BY(mu_);  // not yet written
  v1::TokenEvent writing_ ABSL_GUARDED_BY(mu_);  // owned by the write in flight
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  int64_t num_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool final_event_pending_ ABSL_GUARDED_BY(mu_) = false;  // merged into pending_ when written
  v1::FinishReason final_reason_ ABSL_GUARDED_BY(mu_) = v1::FINISH_REASON_UNSPECIFIED;
  bool preempted_ ABSL_GUARDED_BY(mu_) = false;  // Preempt() ended the stream
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
  bool finish_sent_ ABSL_GUARDED_BY(mu_) = false;
};

// The reactor of one StreamTokens or Run call. Deletes itself when the call is done.
class TokenStreamReactor : public grpc::ServerWriteReactor<v1::TokenEvent> {
 public:
  // Streams `sink`'s events. `on_cancel` runs on a gRPC thread when the client cancels a live
  // stream. A sink that had a reactor before gives a reactor that fails with
  // FAILED_PRECONDITION.
  static grpc::ServerWriteReactor<v1::TokenEvent>* Start(std::shared_ptr<TokenSink> sink,
                                                         std::function<void()> on_cancel);
  // A call that ends at once with `status`. REQUIRES: !status.ok().
  static grpc::ServerWriteReactor<v1::TokenEvent>* Failed(const absl::Status& status);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  TokenStreamReactor(std::shared_ptr<TokenSink> sink, std::function<void()> on_cancel);

  std::shared_ptr<TokenSink> sink_;
  std::function<void()> on_cancel_;
};

}  // namespace duet::node

#endif  // DUET_NODE_TOKEN_STREAM_H_
