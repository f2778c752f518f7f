#include "router/token_relay.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace duet::router {

using duet::v1::FinishReason;

TokenRelay::TokenRelay(const Tokenizer& tokenizer, int64_t vocab_size,
                       const duet::v1::SamplingParams& sampling)
    : tokenizer_(tokenizer),
      vocab_size_(vocab_size),
      max_tokens_(sampling.max_tokens()),
      want_logprobs_(sampling.logprobs() > 0),
      ignore_eos_(sampling.ignore_eos()),
      stop_token_ids_(sampling.stop_token_ids().begin(), sampling.stop_token_ids().end()),
      detokenizer_(tokenizer),
      stop_strings_(std::vector<std::string>(sampling.stop_strings().begin(),
                                             sampling.stop_strings().end())) {}

bool TokenRelay::IsStopToken(int32_t id) const {
  if (!ignore_eos_ && tokenizer_.IsEndOfGeneration(id)) return true;
  return std::find(stop_token_ids_.begin(), stop_token_ids_.end(), id) != stop_token_ids_.end();
}

void TokenRelay::End(FinishReason reason, std::string* text) {
  finish_reason_ = reason;
  if (reason == duet::v1::FINISH_REASON_STOP_STRING) return;
  // The end of the stream: an incomplete character becomes U+FFFD, and text held back as a
  // possible stop-string prefix is final.
  const StopStringMatcher::Result tail = stop_strings_.Push(detokenizer_.Flush());
  text->append(tail.emit);
  if (!tail.stopped) text->append(stop_strings_.Flush());
}

absl::Status TokenRelay::Push(const duet::v1::TokenEvent& event, duet::v1::GenerateResponse* out) {
  if (finished()) return absl::OkStatus();
  std::string* text = out->mutable_text();
  for (int i = 0; i < event.token_ids_size() && !finished(); ++i) {
    const int32_t id = event.token_ids(i);
    if (id < 0 || id >= vocab_size_) {
      return absl::InternalError(absl::StrCat("the node sent token id ", id,
                                              " outside the vocabulary [0, ", vocab_size_, ")"));
    }
    out->add_token_ids(id);
    if (want_logprobs_ && i < event.logprobs_size()) *out->add_logprobs() = event.logprobs(i);
    ++num_tokens_;
    if (IsStopToken(id)) {
      End(duet::v1::FINISH_REASON_STOP, text);
      break;
    }
    const StopStringMatcher::Result r = stop_strings_.Push(detokenizer_.Push(id));
    text->append(r.emit);
    if (r.stopped) {
      End(duet::v1::FINISH_REASON_STOP_STRING, text);
      break;
    }
    if (num_tokens_ >= max_tokens_) End(duet::v1::FINISH_REASON_LENGTH, text);
  }
  if (finished()) {
    ended_by_relay_ = event.finish_reason() == duet::v1::FINISH_REASON_UNSPECIFIED;
  } else if (event.finish_reason() != duet::v1::FINISH_REASON_UNSPECIFIED) {
    End(event.finish_reason(), text);
  }
  if (finished()) out->set_finish_reason(finish_reason_);
  return absl::OkStatus();
}

}  // namespace duet::router
