#include "common/model/unicode.h"

#include <array>

namespace duet {
namespace {

// Bytes that GPT-2 keeps as themselves: printable ASCII and printable Latin-1 (minus the soft
// hyphen U+00AD).
constexpr bool IsSelfMappedByte(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

constexpr std::array<uint16_t, 256> MakeByteToUnicode() {
  std::array<uint16_t, 256> table{};
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    table[b] = static_cast<uint16_t>(IsSelfMappedByte(b) ? b : 256 + next++);
  }
  return table;
}

constexpr std::array<uint16_t, 256> kByteToUnicode = MakeByteToUnicode();

// All mapped code points are below U+0144 (256 + 68).
constexpr uint32_t kByteLevelLimit = 0x144;

constexpr std::array<int16_t, kByteLevelLimit> MakeUnicodeToByte() {
  std::array<int16_t, kByteLevelLimit> table{};
  for (auto& v : table) v = -1;
  for (int b = 0; b < 256; ++b) table[kByteToUnicode[b]] = static_cast<int16_t>(b);
  return table;
}

constexpr std::array<int16_t, kByteLevelLimit> kUnicodeToByte = MakeUnicodeToByte();

}  // namespace

bool IsScalarValue(uint32_t code_point) {
  return code_point <= kMaxCodePoint && (code_point < 0xD800 || code_point > 0xDFFF);
}

size_t Utf8SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 1;
}

Utf8Decoded DecodeUtf8(std::string_view bytes) {
  const auto b0 = static_cast<uint8_t>(bytes[0]);
  Utf8Decoded result;
  if (b0 < 0x80) {
    result.kind = Utf8Decoded::Kind::kValid;
    result.code_point = b0;
    result.length = 1;
    return result;
  }
  const size_t need = Utf8SequenceLength(b0);
  if (need == 1) return result;  // Invalid lead byte: a subpart of length 1.

  // The allowed range of the second byte depends on the lead (Unicode Table 3-7); that is
  // what excludes overlong forms, surrogates and values above U+10FFFF.
  uint8_t lo = 0x80;
  uint8_t hi = 0xBF;
  if (b0 == 0xE0) lo = 0xA0;
  if (b0 == 0xED) hi = 0x9F;
  if (b0 == 0xF0) lo = 0x90;
  if (b0 == 0xF4) hi = 0x8F;

  uint32_t cp = need == 2 ? (b0 & 0x1F) : need == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (size_t i = 1; i < need; ++i) {
    if (i >= bytes.size()) {
      result.kind = Utf8Decoded::Kind::kIncomplete;
      result.length = i;
      return result;
    }
    const auto b = static_cast<uint8_t>(bytes[i]);
    const uint8_t min = i == 1 ? lo : 0x80;
    const uint8_t max = i == 1 ? hi : 0xBF;
    if (b < min || b > max) {
      result.length = i;
      return result;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  result.kind = Utf8Decoded::Kind::kValid;
  result.code_point = cp;
  result.length = need;
  return result;
}

void AppendUtf8(uint32_t code_point, std::string* out) {
  if (!IsScalarValue(code_point)) code_point = kReplacementCharacter;
  if (code_point < 0x80) {
    out->push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

std::string EncodeUtf8(uint32_t code_point) {
  std::string out;
  AppendUtf8(code_point, &out);
  return out;
}

bool IsValidUtf8(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Decoded d = DecodeUtf8(bytes.substr(pos));
    if (d.kind != Utf8Decoded::Kind::kValid) return false;
    pos += d.length;
  }
  return true;
}

std::string SanitizeUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Decoded d = DecodeUtf8(bytes.substr(pos));
    if (d.kind == Utf8Decoded::Kind::kValid) {
      out.append(bytes.substr(pos, d.length));
    } else {
      out.append(kReplacementUtf8);
    }
    pos += d.length;
  }
  return out;
}

size_t Utf8CompletePrefixLength(std::string_view bytes) {
  // Only the last sequence can be incomplete; it starts at most 3 bytes before the end, but
  // where it starts depends on everything before it, so walk from a known boundary. Walking
  // from the start is linear and the callers pass short buffers.
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Decoded d = DecodeUtf8(bytes.substr(pos));
    if (d.kind == Utf8Decoded::Kind::kIncomplete) return pos;
    pos += d.length;
  }
  return bytes.size();
}

std::vector<uint32_t> DecodeUtf8ToCodePoints(std::string_view bytes) {
  std::vector<uint32_t> out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Decoded d = DecodeUtf8(bytes.substr(pos));
    out.push_back(d.kind == Utf8Decoded::Kind::kValid ? d.code_point : kReplacementCharacter);
    pos += d.length;
  }
  return out;
}

uint32_t ByteToUnicode(uint8_t byte) { return kByteToUnicode[byte]; }

int UnicodeToByte(uint32_t code_point) {
  return code_point < kByteLevelLimit ? kUnicodeToByte[code_point] : -1;
}

std::string BytesToByteLevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) AppendUtf8(kByteToUnicode[static_cast<uint8_t>(c)], &out);
  return out;
}

std::string ByteLevelToBytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const Utf8Decoded d = DecodeUtf8(text.substr(pos));
    const int byte = d.kind == Utf8Decoded::Kind::kValid ? UnicodeToByte(d.code_point) : -1;
    if (byte >= 0) {
      out.push_back(static_cast<char>(byte));
    } else {
      out.append(text.substr(pos, d.length));
    }
    pos += d.length;
  }
  return out;
}

}  // namespace duet
