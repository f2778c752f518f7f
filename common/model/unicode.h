// UTF-8 encoding and validation, and the GPT-2 byte <-> code point mapping used by byte-level
// BPE tokenizers.
//
// Validation follows the Unicode standard (no overlong forms, no surrogates, nothing above
// U+10FFFF). Ill-formed input is replaced per the "maximal subpart" rule (Unicode 15, section
// 3.9, as WHATWG's decoder does): each maximal prefix of a would-be sequence becomes one U+FFFD.
// Because that rule decides every replacement by looking only forward from where the bad
// sequence starts, a stream cut at arbitrary byte boundaries sanitizes to the same text as the
// whole string (see Utf8CompletePrefixLength), which the streaming detokenizer relies on.
#ifndef DUET_COMMON_MODEL_UNICODE_H_
#define DUET_COMMON_MODEL_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace duet {

inline constexpr uint32_t kMaxCodePoint = 0x10FFFF;
inline constexpr uint32_t kReplacementCharacter = 0xFFFD;
// UTF-8 of U+FFFD.
inline constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

// True for scalar values: <= U+10FFFF and not a surrogate (U+D800..U+DFFF).
bool IsScalarValue(uint32_t code_point);

// Result of decoding the sequence at the start of a byte string.
struct Utf8Decoded {
  enum class Kind {
    kValid,       // code_point is set; length is 1..4.
    kIncomplete,  // A valid prefix of a sequence that the input ends inside; length = prefix.
    kInvalid,     // An ill-formed maximal subpart of length 1..3; code_point is U+FFFD.
  };
  Kind kind = Kind::kInvalid;
  uint32_t code_point = kReplacementCharacter;
  size_t length = 1;  // Bytes consumed; always >= 1.
};

// Decodes the sequence at the start of `bytes`. REQUIRES: !bytes.empty().
Utf8Decoded DecodeUtf8(std::string_view bytes);

// Number of bytes a sequence starting with `lead` claims (1..4); 1 for bytes that cannot start
// a sequence (continuation bytes, 0xC0, 0xC1, 0xF5..0xFF).
size_t Utf8SequenceLength(uint8_t lead);

// Appends the UTF-8 encoding of `code_point`. Code points that are not scalar values are
// written as U+FFFD.
void AppendUtf8(uint32_t code_point, std::string* out);
std::string EncodeUtf8(uint32_t code_point);

bool IsValidUtf8(std::string_view bytes);

// `bytes` with every ill-formed subpart (including a truncated final sequence) replaced by
// U+FFFD. Valid input is returned unchanged.
std::string SanitizeUtf8(std::string_view bytes);

// Length of the longest prefix of `bytes` that does not end inside a sequence which more bytes
// could still complete. Everything before that point can be sanitized and emitted now; the
// remaining tail (at most 3 bytes) is a valid, incomplete sequence prefix.
size_t Utf8CompletePrefixLength(std::string_view bytes);

// Code points of `bytes`, with each ill-formed subpart decoded as U+FFFD.
std::vector<uint32_t> DecodeUtf8ToCodePoints(std::string_view bytes);

// GPT-2 byte-level mapping: every byte value maps to a printable code point. Printable Latin-1
// bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) map to themselves; the remaining 68 bytes map, in
// increasing byte order, to U+0100, U+0101, ... So ' ' (0x20) maps to U+0120 'Ġ' and '\n'
// (0x0A) to U+010A 'Ċ'.
uint32_t ByteToUnicode(uint8_t byte);
// Inverse of ByteToUnicode; -1 for code points that no byte maps to.
int UnicodeToByte(uint32_t code_point);

// Each byte of `bytes` replaced by the UTF-8 of ByteToUnicode(byte).
std::string BytesToByteLevel(std::string_view bytes);
// Inverse of BytesToByteLevel. Code points that no byte maps to (and ill-formed input) are
// copied through unchanged, so a byte-level vocab's odd tokens still decode to something.
std::string ByteLevelToBytes(std::string_view text);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_UNICODE_H_
