// Wire round trips of the duet.v1 messages, corruption, and pinned field numbers.
#include <string>

#include "duet/v1/config.pb.h"
#include "duet/v1/duet.pb.h"
#include "duet/v1/internal.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace duet::v1 {
namespace {

using google::protobuf::util::MessageDifferencer;

KvChunk FullChunk() {
  KvChunk chunk;
  chunk.set_request_id("r-0001f3");
  chunk.set_reservation_id("decode-0/res-7");
  chunk.set_seq_no(41);
  chunk.set_layer_begin(4);
  chunk.set_layer_end(6);
  chunk.set_block_begin(0);
  chunk.set_block_end(3);
  chunk.set_num_tokens(37);
  std::string payload(1000, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>((i * 131 + 7) & 0xff);
  chunk.set_payload(payload);
  chunk.set_checksum(0xfedcba9876543210ULL);
  chunk.set_last(true);
  chunk.set_first_token(1234);
  TokenLogprobs* logprobs = chunk.mutable_first_token_logprobs();
  logprobs->set_token_id(1234);
  logprobs->set_logprob(-0.25f);
  TopLogprob* top = logprobs->add_top_logprobs();
  top->set_token_id(99);
  top->set_logprob(-1.5f);
  chunk.set_format_version(1);
  chunk.set_kv_dtype(KV_DTYPE_FP8_E4M3);
  return chunk;
}

TEST(ProtoTest, KvChunkRoundTrips) {
  const KvChunk chunk = FullChunk();
  const std::string bytes = chunk.SerializeAsString();
  KvChunk parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  EXPECT_TRUE(MessageDifferencer::Equals(chunk, parsed));
  EXPECT_EQ(parsed.payload(), chunk.payload());
  EXPECT_EQ(parsed.checksum(), 0xfedcba9876543210ULL);
  EXPECT_EQ(parsed.SerializeAsString(), bytes);
}

TEST(ProtoTest, CorruptKvChunkBytesDoNotParse) {
  const std::string bytes = FullChunk().SerializeAsString();
  KvChunk parsed;
  // Cut inside the payload field: the length prefix promises more than there is.
  EXPECT_FALSE(parsed.ParseFromString(bytes.substr(0, bytes.size() / 2)));
  // A length prefix far beyond the buffer.
  EXPECT_FALSE(parsed.ParseFromString(std::string("\x4a\xff\xff\xff\x0f", 5) + "abc"));
  // Wire type 7 does not exist.
  EXPECT_FALSE(parsed.ParseFromString(std::string("\x0f\x01", 2)));
  // Field number 0 is invalid.
  EXPECT_FALSE(parsed.ParseFromString(std::string("\x00\x01", 2)));
}

// Field numbers are the wire contract: this golden encoding breaks if any is renumbered.
TEST(ProtoTest, KvChunkFieldNumbersArePinned) {
  KvChunk chunk;
  chunk.set_request_id("r");                               // 1
  chunk.set_reservation_id("s");                           // 2
  chunk.set_seq_no(3);                                     // 3
  chunk.set_layer_begin(4);                                // 4
  chunk.set_layer_end(5);                                  // 5
  chunk.set_block_begin(6);                                // 6
  chunk.set_block_end(7);                                  // 7
  chunk.set_num_tokens(8);                                 // 8
  chunk.set_payload("p");                                  // 9
  chunk.set_checksum(10);                                  // 10
  chunk.set_last(true);                                    // 11
  chunk.set_first_token(12);                               // 12
  chunk.mutable_first_token_logprobs()->set_token_id(13);  // 13
  chunk.set_abort_reason("a");                             // 14
  chunk.set_format_version(15);                            // 15
  chunk.set_kv_dtype(KV_DTYPE_F16);                        // 16
  const std::string expected(
      "\x0a\x01r\x12\x01s\x18\x03\x20\x04\x28\x05\x30\x06\x38\x07\x40\x08\x4a\x01p\x50\x0a"
      "\x58\x01\x60\x0c\x6a\x02\x08\x0d\x72\x01"
      "a\x78\x0f\x80\x01\x02",
      39);
  EXPECT_EQ(chunk.SerializeAsString(), expected);
}

TEST(ProtoTest, GenerateRequestOneofAndOptionalPresence) {
  GenerateRequest request;
  request.set_text("hello");
  request.mutable_token_ids()->add_ids(5);  // replaces the text
  EXPECT_EQ(request.prompt_case(), GenerateRequest::kTokenIds);
  EXPECT_FALSE(request.has_add_bos());
  request.set_add_bos(false);  // present even though false
  request.mutable_sampling()->set_temperature(0.0);
  GenerateRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(request.SerializeAsString()));
  EXPECT_EQ(parsed.prompt_case(), GenerateRequest::kTokenIds);
  EXPECT_TRUE(parsed.has_add_bos());
  EXPECT_FALSE(parsed.add_bos());
  EXPECT_TRUE(parsed.sampling().has_temperature());  // 0 = greedy, not "unset"
  EXPECT_FALSE(parsed.sampling().has_top_p());
  EXPECT_FALSE(parsed.sampling().has_seed());
}

TEST(ProtoTest, EnumZeroValuesMeanUnset) {
  EXPECT_EQ(FINISH_REASON_UNSPECIFIED, 0);
  EXPECT_EQ(SPECULATION_DEFAULT, 0);
  EXPECT_EQ(KV_DTYPE_UNSPECIFIED, 0);
  EXPECT_EQ(NODE_ROLE_UNSPECIFIED, 0);
  EXPECT_EQ(FINISH_REASON_ERROR, 5);
  EXPECT_EQ(KV_DTYPE_FP8_E4M3, 3);
}

}  // namespace
}  // namespace duet::v1
