// Turns the TokenEvents a node streams into the client's GenerateResponse deltas: token ids,
// text, logprobs and the finish reason. Pure (no RPCs).
//
// Text: a StreamingDetokenizer, so every delta is valid UTF-8 and never splits a character,
// followed by a StopStringMatcher, so text that could still turn out to be part of a stop
// string is held back and a stop string is never emitted.
//
// The nodes apply the stop conditions; the relay applies them again, so the text is right and
// a node that overshoots is cut off:
//   - a stop token (SamplingParams.stop_token_ids, or the model's end-of-generation tokens
//     unless ignore_eos) ends the stream with FINISH_REASON_STOP; it is the last token id and
//     its text is not emitted;
//   - a completed stop string ends it with FINISH_REASON_STOP_STRING; the token that completed
//     it is the last token id and the text stops right before the match;
//   - the max_tokens-th token ends it with FINISH_REASON_LENGTH.
// Tokens after the end are dropped. When the relay ends a stream before the node's final event
// (ended_by_relay()), the caller must cancel the node's stream.
// A node's own finish reason ends the stream where the relay did not already; then the held
// back text is emitted (except after FINISH_REASON_STOP_STRING, where it is the match's start).
//
// Not thread-safe; one per request.
#ifndef DUET_ROUTER_TOKEN_RELAY_H_
#define DUET_ROUTER_TOKEN_RELAY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/model/detokenizer.h"
#include "common/model/stop_strings.h"
#include "common/model/tokenizer.h"
#include "duet/v1/duet.pb.h"
#include "duet/v1/internal.pb.h"
#include "duet/v1/types.pb.h"

namespace duet::router {

class TokenRelay {
 public:
  // `sampling`: the resolved parameters (max_tokens set). REQUIRES: tokenizer outlives this.
  TokenRelay(const Tokenizer& tokenizer, int64_t vocab_size,
             const duet::v1::SamplingParams& sampling);

  // Appends one event's tokens to *out (token_ids, text, logprobs, and finish_reason when the
  // stream ended with this event); request_id and usage are left to the caller. Events after
  // the end add nothing. INTERNAL naming the id for a token outside [0, vocab_size).
  absl::Status Push(const duet::v1::TokenEvent& event, duet::v1::GenerateResponse* out);

  bool finished() const { return finish_reason_ != duet::v1::FINISH_REASON_UNSPECIFIED; }
  duet::v1::FinishReason finish_reason() const { return finish_reason_; }
  // True when the relay ended the stream on its own, before the node's final event.
  bool ended_by_relay() const { return ended_by_relay_; }
  // Completion tokens relayed so far (including a final stop token).
  int64_t num_tokens() const { return num_tokens_; }

 private:
  bool IsStopToken(int32_t id) const;
  // Ends the stream with `reason` and appends what is held back (when the reason allows).
  void End(duet::v1::FinishReason reason, std::string* text);

  const Tokenizer& tokenizer_;
  const int64_t vocab_size_;
  const int64_t max_tokens_;
  const bool want_logprobs_;
  const bool ignore_eos_;
  const std::vector<int32_t> stop_token_ids_;
  StreamingDetokenizer detokenizer_;
  StopStringMatcher stop_strings_;
  duet::v1::FinishReason finish_reason_ = duet::v1::FINISH_REASON_UNSPECIFIED;
  bool ended_by_relay_ = false;
  int64_t num_tokens_ = 0;
};

}  // namespace duet::router

#endif  // DUET_ROUTER_TOKEN_RELAY_H_
