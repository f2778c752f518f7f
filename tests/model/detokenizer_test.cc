#include "common/model/detokenizer.h"

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/model/gguf.h"
#include "common/model/tokenizer.h"
#include "common/model/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet {
namespace {

using ::testing::ElementsAre;

const std::string kFffd(kReplacementUtf8);

// SPM vocab with byte fallback: <unk> <s> </s>, <0x00>..<0xFF> (ids 3..258), then pieces.
std::unique_ptr<Tokenizer> ByteFallbackTokenizer() {
  TokenizerVocab v;
  v.kind = TokenizerKind::kSpm;
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.token_types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    v.tokens.push_back(name);
    v.token_types.push_back(TokenType::kByte);
  }
  for (const char* piece : {"\xE2\x96\x81", "h", "i", "\xE2\x96\x81hi", "\xC3\xA9"}) {
    v.tokens.push_back(piece);
    v.token_types.push_back(TokenType::kNormal);
  }
  v.add_space_prefix = false;
  auto tok = Tokenizer::FromVocab(std::move(v));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(tok).value();
}

int32_t Byte(uint8_t b) { return 3 + b; }

// Streams `ids` one at a time; checks every chunk is valid UTF-8 and returns the whole text.
std::string Stream(const Tokenizer& tok, const std::vector<int32_t>& ids,
                   std::vector<std::string>* chunks = nullptr) {
  StreamingDetokenizer detok(tok);
  std::string text;
  for (const int32_t id : ids) {
    const std::string chunk = detok.Push(id);
    EXPECT_TRUE(IsValidUtf8(chunk)) << testing::PrintToString(chunk);
    if (chunks != nullptr) chunks->push_back(chunk);
    text += chunk;
  }
  const std::string rest = detok.Flush();
  EXPECT_TRUE(IsValidUtf8(rest));
  if (chunks != nullptr) chunks->push_back(rest);
  return text + rest;
}

TEST(StreamingDetokenizerTest, HoldsSplitCharactersUntilComplete) {
  auto tok = ByteFallbackTokenizer();
  // "hi 中🦙": U+4E2D and U+1F999 have no pieces, so they arrive as byte tokens.
  const std::vector<int32_t> ids = tok->Encode("hi \xE4\xB8\xAD\xF0\x9F\xA6\x99", false);
  ASSERT_THAT(ids, testing::Contains(Byte(0xE4)));
  std::vector<std::string> chunks;
  const std::string text = Stream(*tok, ids, &chunks);
  EXPECT_EQ(text, tok->Decode(ids));
  EXPECT_EQ(text, "hi \xE4\xB8\xAD\xF0\x9F\xA6\x99");
  // The multi-byte characters come out whole, each on the token that completes it.
  EXPECT_THAT(chunks, testing::Contains("\xE4\xB8\xAD"));
  EXPECT_THAT(chunks, testing::Contains("\xF0\x9F\xA6\x99"));
}

TEST(StreamingDetokenizerTest, EmitsNothingMidCharacter) {
  auto tok = ByteFallbackTokenizer();
  StreamingDetokenizer detok(*tok);
  EXPECT_EQ(detok.Push(Byte(0xF0)), "");
  EXPECT_EQ(detok.Push(Byte(0x9F)), "");
  EXPECT_EQ(detok.Push(Byte(0xA6)), "");
  EXPECT_EQ(detok.Push(Byte(0x99)), "\xF0\x9F\xA6\x99");
  EXPECT_EQ(detok.Flush(), "");
}

TEST(StreamingDetokenizerTest, BrokenSequencesBecomeReplacementCharactersPromptly) {
  auto tok = ByteFallbackTokenizer();
  StreamingDetokenizer detok(*tok);
  EXPECT_EQ(detok.Push(Byte(0xFF)), kFffd);  // Can never start a character: not held.
  EXPECT_EQ(detok.Push(Byte(0xE4)), "");
  // "h" cannot continue U+4E00..: the held byte is replaced and "h" follows.
  EXPECT_EQ(detok.Push(tok->FindToken("h")), kFffd + "h");
  EXPECT_EQ(detok.Push(Byte(0xE4)), "");
  EXPECT_EQ(detok.Push(Byte(0xB8)), "");
  EXPECT_EQ(detok.Flush(), kFffd);  // Incomplete at the end: one replacement.
  // Flush reset the state.
  EXPECT_EQ(detok.Push(tok->FindToken("i")), "i");
}

TEST(StreamingDetokenizerTest, SkipsControlAndOutOfRangeIds) {
  auto tok = ByteFallbackTokenizer();
  StreamingDetokenizer detok(*tok);
  EXPECT_EQ(detok.Push(1), "");
  EXPECT_EQ(detok.Push(-1), "");
  EXPECT_EQ(detok.Push(1 << 30), "");
  EXPECT_EQ(detok.Push(tok->FindToken("\xE2\x96\x81hi")), " hi");
}

TEST(StreamingDetokenizerTest, ConcatenationEqualsSanitizedDecodeOnRandomIds) {
  auto tok = ByteFallbackTokenizer();
  std::mt19937 rng(2024);
  // Mostly byte tokens with UTF-8-like structure, plus pieces and control tokens.
  const std::vector<int32_t> pool = {
      Byte(0xE4), Byte(0xB8), Byte(0xAD), Byte(0xF0),          Byte(0x9F),
      Byte(0xA6), Byte(0x99), Byte(0xC3), Byte(0xA9),          Byte(0xFF),
      Byte('a'),  1,          2,          tok->FindToken("h"), tok->FindToken("\xC3\xA9")};
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<int32_t> ids(rng() % 20);
    for (int32_t& id : ids) id = pool[rng() % pool.size()];
    ASSERT_EQ(Stream(*tok, ids), SanitizeUtf8(tok->Decode(ids)));
  }
}

TEST(StreamingDetokenizerTest, RealVocabEmojiAndCjk) {
  const std::string path = std::string(DUET_SHARED_DIR) + "/tokenizer/ggml-vocab-llama-spm.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path;
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text =
      "\xF0\x9F\xA6\x99 llama \xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x81 "
      "\xF0\x9F\x98\xB6\xE2\x80\x8D\xF0\x9F\x8C\xAB\xEF\xB8\x8F \xED\x95\x9C\xEA\xB5\xAD";
  const std::vector<int32_t> ids = (*tok)->Encode(text, true);
  EXPECT_EQ(Stream(**tok, ids), (*tok)->Decode(ids));
  EXPECT_EQ((*tok)->Decode(ids), " " + text);
}

}  // namespace
}  // namespace duet
