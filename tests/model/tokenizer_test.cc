// Tokenizer and pre-tokenizer behavior on small hand-built vocabs (no shared data needed).
#include "common/model/tokenizer.h"

#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/model/gguf.h"
#include "common/model/gguf_writer.h"
#include "common/model/pretokenizer.h"
#include "common/model/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kSp = "\xE2\x96\x81";  // U+2581, SentencePiece's space.

// ---------------------------------------------------------------------------------------------
// Vocab builders.

// SPM vocab: <unk>, <s>, </s>, 256 byte tokens, then `pieces` (text, score) as normal tokens.
TokenizerVocab SpmVocab(const std::vector<std::pair<std::string, float>>& pieces) {
  TokenizerVocab v;
  v.kind = TokenizerKind::kSpm;
  auto add = [&v](std::string text, float score, TokenType type) {
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.token_types.push_back(type);
  };
  add("<unk>", 0, TokenType::kUnknown);
  add("<s>", 0, TokenType::kControl);
  add("</s>", 0, TokenType::kControl);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    add(name, 0, TokenType::kByte);
  }
  for (const auto& [text, score] : pieces) add(text, score, TokenType::kNormal);
  return v;
}

int32_t SpmByte(uint8_t b) { return 3 + b; }

std::vector<std::pair<std::string, float>> HelloWorldPieces() {
  std::vector<std::pair<std::string, float>> pieces = {{kSp, -10}};
  for (const char* c : {"h", "e", "l", "o", "w", "r", "d", "x", "y", "z"}) {
    pieces.push_back({c, -10});
  }
  // Each merge result's halves are pieces, so "hello" and "world" are reachable.
  const std::vector<std::pair<std::string, float>> merged = {
      {"ll", -1},          {"he", -2},         {"hell", -3},      {"hello", -4},
      {"or", -1},          {kSp + "w", -2},    {kSp + "wor", -3}, {kSp + "worl", -4},
      {kSp + "hello", -5}, {kSp + "world", -5}};
  pieces.insert(pieces.end(), merged.begin(), merged.end());
  return pieces;
}

// Byte-level BPE vocab: ids 0..255 are the GPT-2 characters of bytes 0..255, then `extra`
// tokens, then "<|endoftext|>" (control). Merges as given.
TokenizerVocab BpeVocab(const std::vector<std::string>& extra, std::vector<std::string> merges,
                        std::string pre = "gpt-2") {
  TokenizerVocab v;
  v.kind = TokenizerKind::kBpe;
  v.pre = std::move(pre);
  for (int b = 0; b < 256; ++b) v.tokens.push_back(EncodeUtf8(ByteToUnicode(b)));
  for (const std::string& t : extra) v.tokens.push_back(t);
  v.tokens.push_back("<|endoftext|>");
  v.token_types.assign(v.tokens.size(), TokenType::kNormal);
  v.token_types.back() = TokenType::kControl;
  v.eos_id = static_cast<int32_t>(v.tokens.size()) - 1;
  v.bos_id = v.eos_id;
  v.merges = std::move(merges);
  return v;
}

TokenizerVocab HelloWorldBpe() {
  return BpeVocab({"he", "ll", "hell", "hello", "\xC4\xA0w", "or", "\xC4\xA0wor", "\xC4\xA0worl",
                   "\xC4\xA0world"},
                  {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w", "o r", "\xC4\xA0w or",
                   "\xC4\xA0wor l", "\xC4\xA0worl d"});
}

std::unique_ptr<Tokenizer> Make(TokenizerVocab vocab) {
  auto tokenizer = Tokenizer::FromVocab(std::move(vocab));
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(tokenizer).value() : nullptr;
}

// Random text over a mix of scripts, whitespace and emoji (all valid UTF-8).
std::string RandomText(std::mt19937& rng, int num_chars) {
  static const std::vector<uint32_t> kChars = {
      'a',    'Z',    '0',     '9',     ' ',    ' ',    '\n',  '\t',  '\'',  '!',
      '.',    0xE9,   0xFC,    0x3B1,   0x416,  0x5D0,  0x627, 0x915, 0xE01, 0x3042,
      0x4E2D, 0xAC00, 0x1F600, 0x1F999, 0x200D, 0xFE0F, 0x120, 0xFFFD};
  std::string out;
  for (int i = 0; i < num_chars; ++i) AppendUtf8(kChars[rng() % kChars.size()], &out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer.

std::vector<std::string> SplitWith(std::string_view pre, std::string_view text) {
  auto spec = PreTokenizerSpecFor(pre);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto pt = PreTokenizer::Create(spec->patterns);
  EXPECT_TRUE(pt.ok()) << pt.status();
  std::vector<std::string> out;
  for (std::string_view piece : (*pt)->Split(text)) out.emplace_back(piece);
  return out;
}

TEST(PreTokenizerTest, Gpt2SplitsWordsAndKeepsTrailingSpaceRunsApart) {
  EXPECT_THAT(SplitWith("gpt-2", "Hello world  foo's 123!!"),
              ElementsAre("Hello", " world", " ", " foo", "'s", " 123", "!!"));
  // \s+(?!\S): a whitespace run before a word leaves its last space to the word.
  EXPECT_THAT(SplitWith("gpt-2", "a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(SplitWith("gpt-2", "a  "), ElementsAre("a", "  "));
}

TEST(PreTokenizerTest, UnicodeClassesFollowUnicode) {
  // \p{L} matches Cyrillic and CJK letters; \p{N} matches non-ASCII digits.
  EXPECT_THAT(SplitWith("gpt-2", "\xD0\xBD\xD0\xB5 \xE4\xB8\xAD\xE6\x96\x87 \xD9\xA3"),
              ElementsAre("\xD0\xBD\xD0\xB5", " \xE4\xB8\xAD\xE6\x96\x87", " \xD9\xA3"));
}

TEST(PreTokenizerTest, PatternsApplyInSequenceWithinPieces) {
  // starcoder: single digits first, then the GPT-2 pattern inside each remaining piece.
  EXPECT_THAT(SplitWith("starcoder", "ab 123"), ElementsAre("ab", " ", "1", "2", "3"));
  // llama3: up to three digits, case-insensitive contractions.
  EXPECT_THAT(SplitWith("llama3", "I'M 12345"), ElementsAre("I", "'M", " ", "123", "45"));
}

TEST(PreTokenizerTest, ConcatenationIsTheInputForEveryKnownPre) {
  std::mt19937 rng(7);
  for (const char* pre :
       {"default", "gpt-2", "llama3", "qwen2", "tekken", "gpt-4o", "deepseek-llm", "deepseek-coder",
        "deepseek-v3", "falcon", "starcoder", "refact", "mpt", "bloom", "chatglm-bpe"}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::string text = RandomText(rng, 60);
      if (trial % 5 == 0) text += "\xFF\xE4\xB8";  // Ill-formed bytes stay in gap pieces.
      std::string joined;
      for (const std::string& piece : SplitWith(pre, text)) {
        EXPECT_FALSE(piece.empty()) << pre;
        joined += piece;
      }
      ASSERT_EQ(joined, text) << pre;
    }
  }
}

TEST(PreTokenizerTest, UnknownPreIsAnError) {
  const auto spec = PreTokenizerSpecFor("no-such-pre");
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(spec.status().message(), HasSubstr("'no-such-pre'"));
}

TEST(PreTokenizerTest, BadPatternIsAnError) {
  const auto pt = PreTokenizer::Create({"(unclosed"});
  EXPECT_EQ(pt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pt.status().message(), HasSubstr("(unclosed"));
}

// ---------------------------------------------------------------------------------------------
// SPM.

TEST(SpmTokenizerTest, MergesHighestScoreFirstWithSpacePrefix) {
  auto tok = Make(SpmVocab(HelloWorldPieces()));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), TokenizerKind::kSpm);
  const std::vector<int32_t> ids = tok->Encode("hello world", false);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(tok->TokenText(ids[0]), kSp + "hello");
  EXPECT_EQ(tok->TokenText(ids[1]), kSp + "world");
  // Decoding keeps the leading space of the first piece.
  EXPECT_EQ(tok->Decode(ids), " hello world");
}

TEST(SpmTokenizerTest, ScoreDecidesAndTiesGoLeft) {
  TokenizerVocab v = SpmVocab({{"a", -10}, {"b", -10}, {"c", -10}, {"ab", -1}, {"bc", -0.5}});
  v.add_space_prefix = false;
  auto tok = Make(v);
  ASSERT_NE(tok, nullptr);
  std::vector<std::string> texts;
  for (int32_t id : tok->Encode("abc", false)) texts.push_back(tok->TokenText(id));
  EXPECT_THAT(texts, ElementsAre("a", "bc"));

  TokenizerVocab tie = SpmVocab({{"a", -10}, {"b", -10}, {"c", -10}, {"ab", -1}, {"bc", -1}});
  tie.add_space_prefix = false;
  tok = Make(tie);
  texts.clear();
  for (int32_t id : tok->Encode("abc", false)) texts.push_back(tok->TokenText(id));
  EXPECT_THAT(texts, ElementsAre("ab", "c"));
}

TEST(SpmTokenizerTest, UnusedPiecesAreResegmented) {
  TokenizerVocab v = SpmVocab({{"x", -10}, {"y", -10}, {"z", -10}, {"xy", -1}, {"xyz", -2}});
  v.add_space_prefix = false;
  v.token_types[v.tokens.size() - 2] = TokenType::kUnused;  // "xy"
  auto tok = Make(v);
  ASSERT_NE(tok, nullptr);
  std::vector<std::string> texts;
  for (int32_t id : tok->Encode("xyz", false)) texts.push_back(tok->TokenText(id));
  EXPECT_THAT(texts, ElementsAre("xyz"));  // Merging through an unused piece is fine...
  texts.clear();
  for (int32_t id : tok->Encode("xy", false)) texts.push_back(tok->TokenText(id));
  EXPECT_THAT(texts, ElementsAre("x", "y"));  // ...emitting one is not.
}

TEST(SpmTokenizerTest, ByteFallbackForUnknownCharacters) {
  auto tok = Make(SpmVocab(HelloWorldPieces()));
  ASSERT_NE(tok, nullptr);
  // U+4E2D is E4 B8 AD; the leading U+2581 is a piece.
  const std::vector<int32_t> ids = tok->Encode("\xE4\xB8\xAD", false);
  EXPECT_THAT(ids, ElementsAre(tok->FindToken(kSp), SpmByte(0xE4), SpmByte(0xB8), SpmByte(0xAD)));
  EXPECT_EQ(tok->Decode(ids), " \xE4\xB8\xAD");
  EXPECT_EQ(tok->TokenToPiece(SpmByte('\n')), "\n");
}

TEST(SpmTokenizerTest, WithoutByteTokensUnknownBecomesUnk) {
  TokenizerVocab v;
  v.tokens = {"<unk>", "<s>", "</s>", kSp, "a"};
  v.token_types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl,
                   TokenType::kNormal, TokenType::kNormal};
  auto tok = Make(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("a\xE4\xB8\xAD", false), ElementsAre(3, 4, 0));
}

TEST(SpmTokenizerTest, DefaultsAddBosNotEos) {
  auto tok = Make(SpmVocab(HelloWorldPieces()));
  ASSERT_NE(tok, nullptr);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_FALSE(tok->add_eos());
  EXPECT_TRUE(tok->add_space_prefix());
  EXPECT_EQ(tok->bos_id(), 1);  // llama.cpp's SPM defaults when the vocab names none.
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->unk_id(), 0);
  const std::vector<int32_t> ids = tok->Encode("hello", true);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_THAT(tok->Encode("", true), ElementsAre(1));
  EXPECT_TRUE(tok->Encode("", false).empty());
}

TEST(SpmTokenizerTest, ExplicitFlagsAreHonored) {
  TokenizerVocab v = SpmVocab(HelloWorldPieces());
  v.add_bos = false;
  v.add_eos = true;
  auto tok = Make(v);
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> ids = tok->Encode("hello", true);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(tok->TokenText(ids[0]), kSp + "hello");
  EXPECT_EQ(ids[1], 2);
}

TEST(SpmTokenizerTest, ParseSpecial) {
  auto tok = Make(SpmVocab(HelloWorldPieces()));
  ASSERT_NE(tok, nullptr);
  // Parsed: "<s>" is BOS, and the text after a special token gets the space prefix again.
  const std::vector<int32_t> parsed = tok->Encode("<s>hello", false, /*parse_special=*/true);
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0], 1);
  EXPECT_EQ(tok->TokenText(parsed[1]), kSp + "hello");
  // Not parsed: plain text, through byte fallback; control tokens never come out of merges.
  const std::vector<int32_t> plain = tok->Encode("<s>hello", false);
  EXPECT_THAT(plain, Not(Contains(1)));
  EXPECT_THAT(plain, Contains(SpmByte('<')));
  EXPECT_EQ(tok->Decode(plain), " <s>hello");
  // Rendering: control tokens are hidden unless asked for.
  EXPECT_EQ(tok->Decode(parsed), " hello");
  EXPECT_EQ(tok->Decode(parsed, /*render_special=*/true), "<s> hello");
  EXPECT_EQ(tok->TokenToPiece(1), "");
  EXPECT_EQ(tok->TokenToPiece(1, true), "<s>");
}

TEST(SpmTokenizerTest, UserDefinedTokensAreAlwaysMatched) {
  TokenizerVocab v = SpmVocab(HelloWorldPieces());
  v.tokens.push_back("<tool>");
  v.scores.push_back(0);
  v.token_types.push_back(TokenType::kUserDefined);
  const auto tool = static_cast<int32_t>(v.tokens.size()) - 1;
  auto tok = Make(v);
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> ids = tok->Encode("hello<tool>world", false);
  EXPECT_THAT(ids, Contains(tool));
  EXPECT_EQ(tok->TokenToPiece(tool), "<tool>");  // Rendered without render_special.
}

TEST(SpmTokenizerTest, RoundTripOnRandomUnicode) {
  std::mt19937 rng(42);
  for (bool prefix : {true, false}) {
    TokenizerVocab v = SpmVocab(HelloWorldPieces());
    v.add_space_prefix = prefix;
    auto tok = Make(v);
    ASSERT_NE(tok, nullptr);
    for (int trial = 0; trial < 50; ++trial) {
      const std::string text = RandomText(rng, 1 + rng() % 80);
      EXPECT_EQ(tok->Decode(tok->Encode(text, false)), (prefix ? " " : "") + text);
    }
    // A literal U+2581 is indistinguishable from an escaped space (as in SentencePiece).
    EXPECT_EQ(tok->Decode(tok->Encode("a" + kSp + "b", false)),
              std::string(prefix ? " " : "") + "a b");
    // Ill-formed UTF-8 survives through byte tokens.
    const std::string bad = "a\xFF\xE4\xB8 z";
    EXPECT_EQ(tok->Decode(tok->Encode(bad, false)), (prefix ? " " : "") + bad);
  }
}

TEST(SpmTokenizerTest, RstripTokensSwallowFollowingWhitespace) {
  TokenizerVocab v = SpmVocab(HelloWorldPieces());
  v.tokens.push_back("<|end|>");
  v.scores.push_back(0);
  v.token_types.push_back(TokenType::kControl);
  const auto end = static_cast<int32_t>(v.tokens.size()) - 1;
  v.rstrip_ids = {end};
  auto tok = Make(v);
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> ids = tok->Encode("hello<|end|>\n  world", false, true);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[1], end);
  EXPECT_EQ(tok->TokenText(ids[2]), kSp + "world");

  v.rstrip_ids = {static_cast<int32_t>(v.tokens.size())};
  EXPECT_EQ(Tokenizer::FromVocab(v).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// BPE.

TEST(BpeTokenizerTest, MergesByRank) {
  auto tok = Make(HelloWorldBpe());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), TokenizerKind::kBpe);
  EXPECT_EQ(tok->pre(), "gpt-2");
  const std::vector<int32_t> ids = tok->Encode("hello world", false);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(tok->TokenText(ids[0]), "hello");
  EXPECT_EQ(tok->TokenText(ids[1]), "\xC4\xA0world");
  EXPECT_EQ(tok->TokenToPiece(ids[1]), " world");
  EXPECT_EQ(tok->Decode(ids), "hello world");
}

TEST(BpeTokenizerTest, LowerRankWinsAndTiesGoLeft) {
  auto texts_of = [](const Tokenizer& tok, std::string_view text) {
    std::vector<std::string> out;
    for (int32_t id : tok.Encode(text, false)) out.push_back(tok.TokenText(id));
    return out;
  };
  auto tok = Make(BpeVocab({"ab", "bc"}, {"b c", "a b"}));
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(texts_of(*tok, "abc"), ElementsAre("a", "bc"));
  tok = Make(BpeVocab({"ab", "bc"}, {"a b", "b c"}));
  EXPECT_THAT(texts_of(*tok, "abc"), ElementsAre("ab", "c"));
  // Same pair twice in a word: leftmost first, then the next occurrence.
  tok = Make(BpeVocab({"aa"}, {"a a"}));
  EXPECT_THAT(texts_of(*tok, "aaa"), ElementsAre("aa", "a"));
}

TEST(BpeTokenizerTest, IgnoreMergesEmitsWholeWordTokens) {
  // "abc" is a token but no merge builds it; llama3-style vocabs emit it whole anyway.
  auto llama3 = Make(BpeVocab({"abc"}, {}, "llama3"));
  ASSERT_NE(llama3, nullptr);
  EXPECT_EQ(llama3->Encode("abc", false).size(), 1u);
  auto gpt2 = Make(BpeVocab({"abc"}, {}, "gpt-2"));
  ASSERT_NE(gpt2, nullptr);
  EXPECT_EQ(gpt2->Encode("abc", false).size(), 3u);
}

TEST(BpeTokenizerTest, DefaultsAddNeitherBosNorEos) {
  auto tok = Make(HelloWorldBpe());
  ASSERT_NE(tok, nullptr);
  EXPECT_FALSE(tok->add_bos());
  EXPECT_FALSE(tok->add_eos());
  EXPECT_FALSE(tok->add_space_prefix());
  EXPECT_EQ(tok->Encode("hello", true).size(), 1u);
  // llama3-family pre-tokenizers add BOS by default, as in llama.cpp.
  auto llama3 = Make(BpeVocab({}, {}, "llama3"));
  ASSERT_NE(llama3, nullptr);
  EXPECT_TRUE(llama3->add_bos());
}

TEST(BpeTokenizerTest, ExplicitFlagsAreHonored) {
  TokenizerVocab v = HelloWorldBpe();
  v.add_bos = true;
  v.add_eos = true;
  auto tok = Make(v);
  ASSERT_NE(tok, nullptr);
  const int32_t eot = tok->FindToken("<|endoftext|>");
  EXPECT_THAT(tok->Encode("hello", true), ElementsAre(eot, tok->FindToken("hello"), eot));
  EXPECT_THAT(tok->Encode("hello", false), ElementsAre(tok->FindToken("hello")));
}

TEST(BpeTokenizerTest, ParseSpecial) {
  auto tok = Make(HelloWorldBpe());
  ASSERT_NE(tok, nullptr);
  const int32_t eot = tok->FindToken("<|endoftext|>");
  EXPECT_THAT(tok->Encode("hello<|endoftext|>", false, true),
              ElementsAre(tok->FindToken("hello"), eot));
  const std::vector<int32_t> plain = tok->Encode("hello<|endoftext|>", false);
  EXPECT_THAT(plain, Not(Contains(eot)));
  EXPECT_EQ(tok->Decode(plain), "hello<|endoftext|>");
}

TEST(BpeTokenizerTest, RoundTripIsExactEvenForIllFormedBytes) {
  auto tok = Make(HelloWorldBpe());
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(99);
  for (int trial = 0; trial < 100; ++trial) {
    std::string text = RandomText(rng, 1 + rng() % 80);
    if (trial % 10 == 0) text.insert(text.size() / 2, "\xFF\xC0\xE4\xB8");
    ASSERT_EQ(tok->Decode(tok->Encode(text, false)), text);
  }
}

TEST(BpeTokenizerTest, LongInputsAreNotQuadratic) {
  auto tok = Make(HelloWorldBpe());
  ASSERT_NE(tok, nullptr);
  auto spm = Make(SpmVocab(HelloWorldPieces()));
  ASSERT_NE(spm, nullptr);
  std::mt19937 rng(5);
  const std::vector<std::string> texts = {RandomText(rng, 10000), std::string(10000, 'l'),
                                          std::string(10000, ' ') + "x"};
  for (const Tokenizer* t : {tok.get(), spm.get()}) {
    for (const std::string& text : texts) {
      const auto start = std::chrono::steady_clock::now();
      const std::vector<int32_t> ids = t->Encode(text, false);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      EXPECT_LT(seconds, 1.0);
      EXPECT_FALSE(ids.empty());
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Shared behavior.

TEST(TokenizerTest, OutOfRangeIdsNeverCrash) {
  auto tok = Make(HelloWorldBpe());
  ASSERT_NE(tok, nullptr);
  const int32_t hello = tok->FindToken("hello");
  EXPECT_EQ(tok->Decode({-1, hello, tok->vocab_size(), 1 << 30}), "hello");
  EXPECT_EQ(tok->TokenToPiece(-7), "");
  EXPECT_EQ(tok->TokenToPiece(tok->vocab_size(), true), "");
  EXPECT_EQ(tok->TokenText(-1), "");
  EXPECT_FALSE(tok->IsValidId(tok->vocab_size()));
  EXPECT_TRUE(tok->IsValidId(0));
  EXPECT_FALSE(tok->IsEndOfGeneration(-1));
  EXPECT_EQ(tok->FindToken("no such token"), -1);
}

TEST(TokenizerTest, EndOfGeneration) {
  TokenizerVocab v = SpmVocab(HelloWorldPieces());
  v.tokens.push_back("<|end|>");
  v.scores.push_back(0);
  v.token_types.push_back(TokenType::kControl);
  const auto end = static_cast<int32_t>(v.tokens.size()) - 1;
  auto tok = Make(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_TRUE(tok->IsEndOfGeneration(2));    // eos
  EXPECT_TRUE(tok->IsEndOfGeneration(end));  // eot, found by its text
  EXPECT_EQ(tok->eot_id(), end);
  EXPECT_FALSE(tok->IsEndOfGeneration(1));
  EXPECT_FALSE(tok->IsEndOfGeneration(tok->FindToken(kSp + "hello")));
}

TEST(TokenizerTest, FromVocabValidates) {
  TokenizerVocab empty;
  EXPECT_EQ(Tokenizer::FromVocab(empty).status().code(), absl::StatusCode::kInvalidArgument);

  TokenizerVocab scores = SpmVocab(HelloWorldPieces());
  scores.scores.pop_back();
  auto s = Tokenizer::FromVocab(scores);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("tokenizer.ggml.scores"));

  TokenizerVocab types = SpmVocab(HelloWorldPieces());
  types.token_types.push_back(TokenType::kNormal);
  auto t = Tokenizer::FromVocab(types);
  EXPECT_THAT(t.status().message(), HasSubstr("tokenizer.ggml.token_type"));

  TokenizerVocab bad_merge = BpeVocab({}, {"nospace"});
  auto m = Tokenizer::FromVocab(bad_merge);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), HasSubstr("tokenizer.ggml.merges[0]"));

  TokenizerVocab no_bos = BpeVocab({}, {});
  no_bos.bos_id = -1;
  no_bos.add_bos = true;
  auto b = Tokenizer::FromVocab(no_bos);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("tokenizer.ggml.bos_token_id"));
}

// ---------------------------------------------------------------------------------------------
// GGUF loading.

GgufValue Strings(const std::vector<std::string>& items) {
  GgufArray a{GgufType::kString, {}};
  for (const std::string& s : items) a.items.emplace_back(s);
  return GgufValue(std::move(a));
}

GgufValue Floats(size_t n) {
  GgufArray a{GgufType::kFloat32, {}};
  for (size_t i = 0; i < n; ++i) a.items.emplace_back(-static_cast<float>(i));
  return GgufValue(std::move(a));
}

GgufValue Int32s(const std::vector<int32_t>& items) {
  GgufArray a{GgufType::kInt32, {}};
  for (const int32_t v : items) a.items.emplace_back(v);
  return GgufValue(std::move(a));
}

// A small SPM GGUF: <unk> <s> </s> then a few pieces.
GgufWriter SpmWriter() {
  GgufWriter w;
  w.Set("general.architecture", GgufValue("llama"));
  w.Set("tokenizer.ggml.model", GgufValue("llama"));
  w.Set("tokenizer.ggml.tokens", Strings({"<unk>", "<s>", "</s>", kSp, "a", kSp + "a"}));
  w.Set("tokenizer.ggml.scores", Floats(6));
  w.Set("tokenizer.ggml.token_type", Int32s({2, 3, 3, 1, 1, 1}));
  w.Set("tokenizer.ggml.bos_token_id", GgufValue(uint32_t{1}));
  w.Set("tokenizer.ggml.eos_token_id", GgufValue(uint32_t{2}));
  return w;
}

GgufWriter BpeWriter() {
  GgufWriter w;
  w.Set("tokenizer.ggml.model", GgufValue("gpt2"));
  w.Set("tokenizer.ggml.pre", GgufValue("gpt-2"));
  w.Set("tokenizer.ggml.tokens", Strings({"a", "b", "ab", "<|endoftext|>"}));
  w.Set("tokenizer.ggml.token_type", Int32s({1, 1, 1, 3}));
  w.Set("tokenizer.ggml.merges", Strings({"a b"}));
  w.Set("tokenizer.ggml.eos_token_id", GgufValue(uint32_t{3}));
  return w;
}

// Serializes `w`, parses it back and builds a tokenizer. `bytes` keeps the buffer alive.
absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const GgufWriter& w, std::vector<uint8_t>* bytes) {
  auto buffer = w.WriteToBuffer();
  if (!buffer.ok()) return buffer.status();
  *bytes = std::move(buffer).value();
  auto file = GgufFile::Parse(*bytes);
  if (!file.ok()) return file.status();
  return Tokenizer::FromGguf(**file);
}

TEST(TokenizerGgufTest, LoadsSpm) {
  std::vector<uint8_t> bytes;
  auto tok = Load(SpmWriter(), &bytes);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), TokenizerKind::kSpm);
  EXPECT_EQ((*tok)->vocab_size(), 6);
  EXPECT_EQ((*tok)->pre(), "default");
  EXPECT_TRUE((*tok)->add_bos());
  EXPECT_THAT((*tok)->Encode("a", true), ElementsAre(1, 5));
}

TEST(TokenizerGgufTest, LoadsBpeAndHonorsFlags) {
  GgufWriter w = BpeWriter();
  std::vector<uint8_t> bytes;
  auto tok = Load(w, &bytes);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), TokenizerKind::kBpe);
  EXPECT_FALSE((*tok)->add_bos());
  EXPECT_THAT((*tok)->Encode("ab", true), ElementsAre(2));

  w.Set("tokenizer.ggml.bos_token_id", GgufValue(uint32_t{3}));
  w.Set("tokenizer.ggml.add_bos_token", GgufValue(true));
  w.Set("tokenizer.ggml.add_eos_token", GgufValue(true));
  tok = Load(w, &bytes);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT((*tok)->Encode("ab", true), ElementsAre(3, 2, 3));

  GgufWriter spm = SpmWriter();
  spm.Set("tokenizer.ggml.add_bos_token", GgufValue(false));
  spm.Set("tokenizer.ggml.add_space_prefix", GgufValue(false));
  tok = Load(spm, &bytes);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT((*tok)->Encode("a", true), ElementsAre(4));
}

TEST(TokenizerGgufTest, BadMetadataGivesPreciseErrors) {
  struct Case {
    std::string name;
    std::function<void(GgufWriter&)> edit;
    bool bpe;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"unknown model", [](GgufWriter& w) { w.Set("tokenizer.ggml.model", GgufValue("bert")); },
       false, absl::StatusCode::kInvalidArgument, "'bert'"},
      {"missing tokens",
       [](GgufWriter& w) {
         GgufWriter fresh;
         fresh.Set("tokenizer.ggml.model", GgufValue("llama"));
         w = fresh;
       },
       false, absl::StatusCode::kNotFound, "tokenizer.ggml.tokens"},
      {"missing model",
       [](GgufWriter& w) {
         GgufWriter fresh;
         fresh.Set("tokenizer.ggml.tokens", Strings({"a"}));
         w = fresh;
       },
       false, absl::StatusCode::kNotFound, "tokenizer.ggml.model"},
      {"scores length", [](GgufWriter& w) { w.Set("tokenizer.ggml.scores", Floats(5)); }, false,
       absl::StatusCode::kInvalidArgument, "tokenizer.ggml.scores has 5 entries"},
      {"token_type length",
       [](GgufWriter& w) {
         w.Set("tokenizer.ggml.token_type", Int32s({1, 1}));
       },
       false, absl::StatusCode::kInvalidArgument, "tokenizer.ggml.token_type has 2 entries"},
      {"tokens wrong type", [](GgufWriter& w) { w.Set("tokenizer.ggml.tokens", Int32s({1})); },
       false, absl::StatusCode::kInvalidArgument, "tokenizer.ggml.tokens"},
      {"empty tokens", [](GgufWriter& w) { w.Set("tokenizer.ggml.tokens", Strings({})); }, false,
       absl::StatusCode::kInvalidArgument, "tokenizer.ggml.tokens is empty"},
      {"missing merges",
       [](GgufWriter& w) {
         GgufWriter fresh;
         fresh.Set("tokenizer.ggml.model", GgufValue("gpt2"));
         fresh.Set("tokenizer.ggml.tokens", Strings({"a"}));
         w = fresh;
       },
       true, absl::StatusCode::kNotFound, "tokenizer.ggml.merges"},
      {"unknown pre", [](GgufWriter& w) { w.Set("tokenizer.ggml.pre", GgufValue("mystery")); },
       true, absl::StatusCode::kInvalidArgument, "'mystery'"},
      {"add_bos without bos",
       [](GgufWriter& w) { w.Set("tokenizer.ggml.add_bos_token", GgufValue(true)); }, true,
       absl::StatusCode::kInvalidArgument, "tokenizer.ggml.bos_token_id"},
  };
  for (const Case& c : cases) {
    GgufWriter w = c.bpe ? BpeWriter() : SpmWriter();
    c.edit(w);
    std::vector<uint8_t> bytes;
    const auto tok = Load(w, &bytes);
    EXPECT_EQ(tok.status().code(), c.code) << c.name << ": " << tok.status();
    EXPECT_THAT(tok.status().message(), HasSubstr(c.message)) << c.name;
  }
}

}  // namespace
}  // namespace duet
