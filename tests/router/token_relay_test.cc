// TokenRelay: text deltas that never split a UTF-8 character, stop tokens, stop strings,
// max_tokens, the node's own finish reason, logprobs and bad token ids.
#include "router/token_relay.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/router/test_model.h"

namespace duet::router {
namespace {

using duet::v1::FinishReason;
using duet::v1::GenerateResponse;
using duet::v1::TokenEvent;
using testing::ByteToken;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using testing::kEos;
using testing::TinyModel;

std::vector<int32_t> Bytes(const std::string& text) {
  std::vector<int32_t> ids;
  for (unsigned char c : text) ids.push_back(ByteToken(c));
  return ids;
}

TokenEvent Event(const std::vector<int32_t>& ids,
                 FinishReason finish = duet::v1::FINISH_REASON_UNSPECIFIED) {
  TokenEvent event;
  for (int32_t id : ids) event.add_token_ids(id);
  event.set_finish_reason(finish);
  return event;
}

duet::v1::SamplingParams Sampling(int32_t max_tokens = 100) {
  duet::v1::SamplingParams sampling;
  sampling.set_max_tokens(max_tokens);
  return sampling;
}

// True when `text` is well-formed UTF-8 with no character cut at either end.
bool IsCompleteUtf8(const std::string& text) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const size_t len = c < 0x80           ? 1
                       : (c >> 5) == 0x6  ? 2
                       : (c >> 4) == 0xe  ? 3
                       : (c >> 3) == 0x1e ? 4
                                          : 0;
    if (len == 0 || i + len > text.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) & 0xc0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

class Relay {
 public:
  explicit Relay(const duet::v1::SamplingParams& sampling)
      : relay_(*TinyModel().tokenizer, TinyModel().config.vocab_size, sampling) {}

  GenerateResponse Push(const TokenEvent& event) {
    GenerateResponse out;
    const absl::Status status = relay_.Push(event, &out);
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_TRUE(IsCompleteUtf8(out.text())) << "delta splits a character: " << out.text();
    text_ += out.text();
    for (int32_t id : out.token_ids()) tokens_.push_back(id);
    return out;
  }

  TokenRelay& relay() { return relay_; }
  const std::string& text() const { return text_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }

 private:
  TokenRelay relay_;
  std::string text_;
  std::vector<int32_t> tokens_;
};

TEST(TokenRelayTest, MultiByteCharactersAreHeldUntilComplete) {
  // "é" = C3 A9 and "€" = E2 82 AC, one byte token each.
  Relay r(Sampling());
  EXPECT_EQ(r.Push(Event(Bytes("a"))).text(), "a");
  EXPECT_EQ(r.Push(Event({ByteToken(0xc3)})).text(), "");
  EXPECT_EQ(r.Push(Event({ByteToken(0xa9), ByteToken(0xe2)})).text(), "\xc3\xa9");
  EXPECT_EQ(r.Push(Event({ByteToken(0x82)})).text(), "");
  const GenerateResponse last =
      r.Push(Event({ByteToken(0xac), kEos}, duet::v1::FINISH_REASON_STOP));
  EXPECT_EQ(last.text(), "\xe2\x82\xac");
  EXPECT_EQ(last.finish_reason(), duet::v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.text(), "a\xc3\xa9\xe2\x82\xac");
  EXPECT_EQ(r.relay().num_tokens(), 7);
  EXPECT_FALSE(r.relay().ended_by_relay());
}

TEST(TokenRelayTest, IncompleteCharacterAtTheEndBecomesReplacementCharacter) {
  Relay r(Sampling(2));
  r.Push(Event(Bytes("x")));
  const GenerateResponse last = r.Push(Event({ByteToken(0xc3)}, duet::v1::FINISH_REASON_LENGTH));
  EXPECT_EQ(last.text(), "\xef\xbf\xbd");
  EXPECT_EQ(last.finish_reason(), duet::v1::FINISH_REASON_LENGTH);
}

TEST(TokenRelayTest, EosEndsTheStreamWithoutTextAndDropsWhatFollows) {
  Relay r(Sampling());
  const GenerateResponse out =
      r.Push(Event({ByteToken('o'), ByteToken('k'), kEos, ByteToken('x')}));
  EXPECT_THAT(out.token_ids(), ElementsAre(ByteToken('o'), ByteToken('k'), kEos));
  EXPECT_EQ(out.text(), "ok");
  EXPECT_EQ(out.finish_reason(), duet::v1::FINISH_REASON_STOP);
  EXPECT_TRUE(r.relay().ended_by_relay());  // the node had not finished: cancel it
  EXPECT_EQ(r.relay().num_tokens(), 3);
  // Later events add nothing.
  const GenerateResponse after = r.Push(Event(Bytes("zz"), duet::v1::FINISH_REASON_LENGTH));
  EXPECT_EQ(after.token_ids_size(), 0);
  EXPECT_EQ(after.finish_reason(), duet::v1::FINISH_REASON_UNSPECIFIED);
}

TEST(TokenRelayTest, IgnoreEosKeepsGoingButStopTokenIdsStillApply) {
  duet::v1::SamplingParams sampling = Sampling();
  sampling.set_ignore_eos(true);
  sampling.add_stop_token_ids(ByteToken('.'));
  Relay r(sampling);
  r.Push(Event({ByteToken('a'), kEos, ByteToken('b')}));
  EXPECT_FALSE(r.relay().finished());
  const GenerateResponse out = r.Push(Event({ByteToken('.'), ByteToken('c')}));
  EXPECT_EQ(out.finish_reason(), duet::v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.text(), "ab");  // the stop token's "." is not emitted
  EXPECT_EQ(r.tokens().back(), ByteToken('.'));
}

TEST(TokenRelayTest, StopStringIsHeldBackAndNeverEmitted) {
  duet::v1::SamplingParams sampling = Sampling();
  sampling.add_stop_strings("END");
  Relay r(sampling);
  EXPECT_EQ(r.Push(Event(Bytes("abE"))).text(), "ab");  // "E" may start "END"
  EXPECT_EQ(r.Push(Event(Bytes("Nx"))).text(), "ENx");  // it did not
  EXPECT_EQ(r.Push(Event(Bytes("yEN"))).text(), "y");
  const GenerateResponse out = r.Push(Event(Bytes("Dzz")));
  EXPECT_EQ(out.text(), "");
  EXPECT_EQ(out.finish_reason(), duet::v1::FINISH_REASON_STOP_STRING);
  EXPECT_EQ(r.tokens().back(), ByteToken('D'));  // the token that completed the match is last
  EXPECT_EQ(r.text(), "abENxy");
  EXPECT_TRUE(r.relay().ended_by_relay());
}

TEST(TokenRelayTest, NodeStopStringFinishDropsTheHeldBackStart) {
  duet::v1::SamplingParams sampling = Sampling();
  sampling.add_stop_strings("ab");
  Relay r(sampling);
  EXPECT_EQ(r.Push(Event(Bytes("xa"))).text(), "x");
  // The node says a stop string completed (e.g. its detokenization differs): trust it.
  const GenerateResponse out = r.Push(Event({}, duet::v1::FINISH_REASON_STOP_STRING));
  EXPECT_EQ(out.finish_reason(), duet::v1::FINISH_REASON_STOP_STRING);
  EXPECT_EQ(r.text(), "x");
}

TEST(TokenRelayTest, HeldBackTextIsEmittedAtTheEnd) {
  duet::v1::SamplingParams sampling = Sampling();
  sampling.add_stop_strings("xyz");
  Relay r(sampling);
  EXPECT_EQ(r.Push(Event(Bytes("axy"))).text(), "a");
  const GenerateResponse out = r.Push(Event({}, duet::v1::FINISH_REASON_LENGTH));
  EXPECT_EQ(out.text(), "xy");
  EXPECT_EQ(out.finish_reason(), duet::v1::FINISH_REASON_LENGTH);
  EXPECT_FALSE(r.relay().ended_by_relay());
}

TEST(TokenRelayTest, MaxTokensCutsAnOvershootingNode) {
  Relay r(Sampling(3));
  const GenerateResponse out = r.Push(Event(Bytes("abcdef")));
  EXPECT_THAT(out.token_ids(), ElementsAreArray(Bytes("abc")));
  EXPECT_EQ(out.text(), "abc");
  EXPECT_EQ(out.finish_reason(), duet::v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(r.relay().ended_by_relay());
}

TEST(TokenRelayTest, NodeFinishReasonIsRelayed) {
  for (FinishReason reason : {duet::v1::FINISH_REASON_LENGTH, duet::v1::FINISH_REASON_CANCELLED,
                              duet::v1::FINISH_REASON_ERROR}) {
    Relay r(Sampling());
    const GenerateResponse out = r.Push(Event(Bytes("hi"), reason));
    EXPECT_EQ(out.finish_reason(), reason);
    EXPECT_EQ(out.text(), "hi");
    EXPECT_FALSE(r.relay().ended_by_relay());
  }
}

TEST(TokenRelayTest, LogprobsAreCopiedOnlyWhenRequested) {
  TokenEvent event = Event(Bytes("ab"));
  for (int i = 0; i < 2; ++i) {
    duet::v1::TokenLogprobs* lp = event.add_logprobs();
    lp->set_token_id(event.token_ids(i));
    lp->set_logprob(-0.5f * (i + 1));
  }
  Relay without(Sampling());
  EXPECT_EQ(without.Push(event).logprobs_size(), 0);
  duet::v1::SamplingParams sampling = Sampling();
  sampling.set_logprobs(2);
  Relay with(sampling);
  const GenerateResponse out = with.Push(event);
  ASSERT_EQ(out.logprobs_size(), 2);
  EXPECT_EQ(out.logprobs(1).logprob(), -1.0f);
  EXPECT_EQ(out.logprobs(0).token_id(), ByteToken('a'));
}

TEST(TokenRelayTest, TokenOutsideTheVocabularyIsAnError) {
  TokenRelay relay(*TinyModel().tokenizer, TinyModel().config.vocab_size, Sampling());
  GenerateResponse out;
  const absl::Status status = relay.Push(Event({260}), &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(status.message(), "the node sent token id 260 outside the vocabulary [0, 260)");
}

}  // namespace
}  // namespace duet::router
