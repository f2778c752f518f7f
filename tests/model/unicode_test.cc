#include "common/model/unicode.h"

#include <random>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace duet {
namespace {

using Kind = Utf8Decoded::Kind;

const std::string kFffd(kReplacementUtf8);

TEST(DecodeUtf8Test, ValidSequencesOfEveryLength) {
  struct Case {
    std::string bytes;
    uint32_t code_point;
  };
  for (const Case& c : {Case{"A", 0x41}, Case{"\xC3\xA9", 0xE9}, Case{"\xE4\xB8\xAD", 0x4E2D},
                        Case{"\xF0\x9F\xA6\x99", 0x1F999}, Case{"\xEF\xBF\xBF", 0xFFFF},
                        Case{"\xF4\x8F\xBF\xBF", 0x10FFFF}, Case{std::string(1, '\0'), 0}}) {
    const Utf8Decoded d = DecodeUtf8(c.bytes);
    EXPECT_EQ(d.kind, Kind::kValid) << c.code_point;
    EXPECT_EQ(d.code_point, c.code_point);
    EXPECT_EQ(d.length, c.bytes.size());
    EXPECT_EQ(EncodeUtf8(c.code_point), c.bytes);
  }
}

TEST(DecodeUtf8Test, RejectsOverlongSurrogatesAndOutOfRange) {
  // Each is invalid at its first byte or second byte; the maximal subpart is what precedes
  // the first byte that cannot continue.
  struct Case {
    std::string bytes;
    size_t length;
  };
  for (const Case& c : {Case{"\xC0\x80", 1}, Case{"\xC1\xBF", 1},      // Overlong 2-byte.
                        Case{"\xE0\x80\x80", 1},                       // Overlong 3-byte.
                        Case{"\xF0\x80\x80\x80", 1},                   // Overlong 4-byte.
                        Case{"\xED\xA0\x80", 1},                       // Surrogate U+D800.
                        Case{"\xF4\x90\x80\x80", 1},                   // U+110000.
                        Case{"\xF5\x80\x80\x80", 1}, Case{"\xFF", 1},  // Never-valid leads.
                        Case{"\x80", 1},                               // Lone continuation.
                        Case{"\xE4\xB8\x41", 2},                       // Interrupted.
                        Case{"\xF0\x9F\xA6\x41", 3}}) {
    const Utf8Decoded d = DecodeUtf8(c.bytes);
    EXPECT_EQ(d.kind, Kind::kInvalid) << testing::PrintToString(c.bytes);
    EXPECT_EQ(d.code_point, kReplacementCharacter);
    EXPECT_EQ(d.length, c.length) << testing::PrintToString(c.bytes);
  }
}

TEST(DecodeUtf8Test, TruncatedSequenceIsIncomplete) {
  for (const std::string bytes : {"\xE4", "\xE4\xB8", "\xF0\x9F\xA6", "\xC3"}) {
    const Utf8Decoded d = DecodeUtf8(bytes);
    EXPECT_EQ(d.kind, Kind::kIncomplete);
    EXPECT_EQ(d.length, bytes.size());
  }
  // A lead whose second byte is already out of range is invalid, not incomplete.
  EXPECT_EQ(DecodeUtf8("\xE0\x80").kind, Kind::kInvalid);
}

TEST(EncodeUtf8Test, NonScalarValuesBecomeReplacementCharacter) {
  EXPECT_EQ(EncodeUtf8(0xD800), kFffd);
  EXPECT_EQ(EncodeUtf8(0x110000), kFffd);
  EXPECT_TRUE(IsScalarValue(0x10FFFF));
  EXPECT_FALSE(IsScalarValue(0xDFFF));
}

TEST(Utf8SequenceLengthTest, FromLeadByte) {
  EXPECT_EQ(Utf8SequenceLength('a'), 1u);
  EXPECT_EQ(Utf8SequenceLength(0xC3), 2u);
  EXPECT_EQ(Utf8SequenceLength(0xE4), 3u);
  EXPECT_EQ(Utf8SequenceLength(0xF0), 4u);
  EXPECT_EQ(Utf8SequenceLength(0x80), 1u);
  EXPECT_EQ(Utf8SequenceLength(0xC0), 1u);
  EXPECT_EQ(Utf8SequenceLength(0xFF), 1u);
}

TEST(SanitizeUtf8Test, ValidTextUnchanged) {
  const std::string text = "h\xC3\xA9llo \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\xA6\x99";
  EXPECT_TRUE(IsValidUtf8(text));
  EXPECT_EQ(SanitizeUtf8(text), text);
}

TEST(SanitizeUtf8Test, ReplacesEachMaximalSubpart) {
  // Unicode's example (section 3.9, Table 3-8 style): 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64.
  EXPECT_EQ(SanitizeUtf8("a\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a" + kFffd + kFffd + kFffd + "b" + kFffd + "c" + kFffd + kFffd + "d");
  EXPECT_EQ(SanitizeUtf8("\xE4\xB8"), kFffd);  // Truncated at the end: one replacement.
  EXPECT_FALSE(IsValidUtf8("\xE4\xB8"));
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), kFffd + kFffd + kFffd);
}

TEST(Utf8CompletePrefixLengthTest, HoldsOnlyACompletableTail) {
  EXPECT_EQ(Utf8CompletePrefixLength("abc"), 3u);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xE4\xB8"), 2u);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xF0\x9F\xA6"), 2u);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xFF"), 3u);      // Can never complete.
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xE0\x80"), 4u);  // Already invalid.
  EXPECT_EQ(Utf8CompletePrefixLength(""), 0u);
}

TEST(Utf8CompletePrefixLengthTest, SanitizingInChunksEqualsSanitizingTheWhole) {
  // The property the streaming detokenizer relies on, over random bytes biased towards
  // UTF-8 structure and random cut points.
  std::mt19937 rng(1234);
  const uint8_t alphabet[] = {'a',  0x80, 0x9F, 0xA0, 0xBF, 0xC2, 0xC3, 0xE0,
                              0xE4, 0xED, 0xF0, 0xF4, 0xF5, 0xFF, 0xB8, 0xAD};
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes;
    const int n = static_cast<int>(rng() % 24);
    for (int i = 0; i < n; ++i) bytes.push_back(static_cast<char>(alphabet[rng() % 16]));
    std::string pending;
    std::string streamed;
    size_t pos = 0;
    while (pos < bytes.size()) {
      const size_t take = 1 + rng() % 4;
      pending += bytes.substr(pos, take);
      pos += take;
      const size_t complete = Utf8CompletePrefixLength(pending);
      const std::string chunk = SanitizeUtf8(pending.substr(0, complete));
      ASSERT_TRUE(IsValidUtf8(chunk));
      streamed += chunk;
      pending.erase(0, complete);
      ASSERT_LE(pending.size(), 3u);
    }
    streamed += SanitizeUtf8(pending);
    ASSERT_EQ(streamed, SanitizeUtf8(bytes)) << testing::PrintToString(bytes);
  }
}

TEST(DecodeUtf8ToCodePointsTest, InvalidBytesBecomeReplacementCharacter) {
  EXPECT_EQ(DecodeUtf8ToCodePoints("a\xE4\xB8\xAD\xFF"),
            (std::vector<uint32_t>{'a', 0x4E2D, kReplacementCharacter}));
}

TEST(ByteLevelTest, Gpt2Mapping) {
  EXPECT_EQ(ByteToUnicode(' '), 0x120u);   // 'Ġ'
  EXPECT_EQ(ByteToUnicode('\n'), 0x10Au);  // 'Ċ'
  EXPECT_EQ(ByteToUnicode('\t'), 0x109u);  // 'ĉ'
  EXPECT_EQ(ByteToUnicode(0), 0x100u);
  EXPECT_EQ(ByteToUnicode('A'), static_cast<uint32_t>('A'));
  EXPECT_EQ(ByteToUnicode(0xE9), 0xE9u);   // Printable Latin-1 maps to itself.
  EXPECT_EQ(ByteToUnicode(0xAD), 0x143u);  // The soft hyphen is the last remapped byte.
  EXPECT_EQ(UnicodeToByte(0x120), ' ');
  EXPECT_EQ(UnicodeToByte(0x144), -1);
  EXPECT_EQ(UnicodeToByte(0x20), -1);  // ' ' itself is not a byte-level character.
  EXPECT_EQ(UnicodeToByte(0x4E2D), -1);
}

TEST(ByteLevelTest, MappingIsABijectionOnBytes) {
  std::set<uint32_t> seen;
  std::string all;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = ByteToUnicode(static_cast<uint8_t>(b));
    EXPECT_TRUE(seen.insert(cp).second) << b;
    EXPECT_EQ(UnicodeToByte(cp), b);
    all.push_back(static_cast<char>(b));
  }
  const std::string mapped = BytesToByteLevel(all);
  EXPECT_TRUE(IsValidUtf8(mapped));
  EXPECT_EQ(ByteLevelToBytes(mapped), all);
  EXPECT_EQ(BytesToByteLevel("Hi there\n"), "Hi\xC4\xA0there\xC4\x8A");
}

TEST(ByteLevelTest, UnmappedCharactersPassThrough) {
  // "中" is not a byte-level character; it is copied as its own UTF-8.
  EXPECT_EQ(ByteLevelToBytes("a\xE4\xB8\xAD\xC4\xA0"), "a\xE4\xB8\xAD ");
}

}  // namespace
}  // namespace duet
