#include "common/model/quant.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace duet {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF codecs assume a little-endian host");

constexpr int kQk = 32;              // Elements per Q8_0 / Q4_0 block.
constexpr int kQ8_0BlockBytes = 34;  // f16 d + 32 x int8.
constexpr int kQ4_0BlockBytes = 18;  // f16 d + 16 bytes of nibbles.

uint32_t FloatBits(float f) { return std::bit_cast<uint32_t>(f); }
float BitsToFloat(uint32_t u) { return std::bit_cast<float>(u); }

// Unaligned little-endian loads and stores: tensor data need not be aligned for the type.
uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
void StoreU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, sizeof(v)); }

// Rounds `v` to nearest with ties away from zero (C's roundf, as ggml uses) and converts to
// int8. NaN maps to 0 and out-of-range values saturate, so non-finite inputs stay defined
// behaviour; finite inputs to the Q8_0 quantizer never reach either case.
int8_t RoundToInt8(float v) {
  if (std::isnan(v)) return 0;
  float r = std::round(v);
  r = std::clamp(r, -128.0f, 127.0f);
  return static_cast<int8_t>(r);
}

// Q4_0's nibble: ggml computes min(15, (int8_t)(x * id + 8.5f)), truncating toward zero. For
// finite inputs x * id + 8.5f lies in [0.5, 16.5]; clamping first keeps NaN/inf defined.
uint8_t Q4Nibble(float scaled) {
  float v = scaled + 8.5f;
  if (std::isnan(v)) return 8;  // Decodes to 0.
  v = std::clamp(v, 0.0f, 15.0f);
  return static_cast<uint8_t>(v);  // Truncation, as the int8 cast does.
}

void QuantizeBlockQ8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int j = 0; j < kQk; ++j) {
    float a = std::fabs(x[j]);
    if (a > amax) amax = a;
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(out, FloatToHalf(d));
  for (int j = 0; j < kQk; ++j) {
    out[2 + j] = static_cast<uint8_t>(RoundToInt8(x[j] * id));
  }
}

void QuantizeBlockQ4_0(const float* x, uint8_t* out) {
  // `max` is the element of largest magnitude with its sign; the first one wins ties.
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < kQk; ++j) {
    float a = std::fabs(x[j]);
    if (amax < a) {
      amax = a;
      max = x[j];
    }
  }
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(out, FloatToHalf(d));
  for (int j = 0; j < kQk / 2; ++j) {
    // Kept as separate float products so no fused multiply-add changes the rounding.
    const float x0 = x[j] * id;
    const float x1 = x[j + kQk / 2] * id;
    out[2 + j] = static_cast<uint8_t>(Q4Nibble(x0) | (Q4Nibble(x1) << 4));
  }
}

void DequantizeBlockQ8_0(const uint8_t* in, float* y) {
  const float d = HalfToFloat(LoadU16(in));
  for (int j = 0; j < kQk; ++j) {
    y[j] = static_cast<float>(static_cast<int8_t>(in[2 + j])) * d;
  }
}

void DequantizeBlockQ4_0(const uint8_t* in, float* y) {
  const float d = HalfToFloat(LoadU16(in));
  for (int j = 0; j < kQk / 2; ++j) {
    const int lo = (in[2 + j] & 0x0F) - 8;
    const int hi = (in[2 + j] >> 4) - 8;
    y[j] = static_cast<float>(lo) * d;
    y[j + kQk / 2] = static_cast<float>(hi) * d;
  }
}

// Aborts on a REQUIRES violation: these are internal contracts, not input validation.
void CheckSupported(GgmlType type, int64_t n) {
  const GgmlTypeTraits& t = TraitsOf(type);
  if (!t.supported || n < 0 || n % t.block_size != 0) std::abort();
}

}  // namespace

uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7FFFFFFF;
  if (ax > 0x7F800000) return sign | 0x7E00;  // NaN: ggml's canonical quiet NaN.
  // 65520 is halfway between 65504 (odd mantissa) and 65536, so it and above round to inf.
  if (ax >= 0x477FF000) return sign | 0x7C00;
  if (ax >= 0x38800000) {  // Normal half: |f| >= 2^-14.
    const uint32_t exp = (ax >> 23) - 127 + 15;
    const uint32_t mant = ax & 0x7FFFFF;
    uint32_t h = (exp << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1FFF;
    // A carry out of the mantissa correctly bumps the exponent.
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal half: units of 2^-24. 2^-25 (0x33000000) is a tie that rounds to even zero.
  if (ax <= 0x33000000) return sign;
  const uint32_t biased_exp = ax >> 23;  // 102..112 here.
  const uint32_t mant = (ax & 0x7FFFFF) | 0x800000;
  const uint32_t shift =
      126 - biased_exp;  // f = mant * 2^(biased_exp - 150) = (mant >> shift) ulps.
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1))) ++h;  // May carry into the smallest normal.
  return static_cast<uint16_t>(sign | h);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in float.
    const float magnitude = static_cast<float>(mant) * 0x1p-24f;
    return BitsToFloat(sign | FloatBits(magnitude));
  }
  if (exp == 31) {
    if (mant == 0) return BitsToFloat(sign | 0x7F800000);
    // NaN: payload kept, quiet bit set (as ggml's float arithmetic conversion yields).
    return BitsToFloat(sign | 0x7FC00000 | (mant << 13));
  }
  return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t FloatToBf16(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7FFFFFFF) > 0x7F800000) {
    return static_cast<uint16_t>((x >> 16) | 0x40);  // NaN: keep sign and payload, force quiet.
  }
  // Round to nearest even: add just under half an ulp, plus one when the kept lsb is odd.
  const uint32_t rounding = 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

float Bf16ToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

void DequantizeRow(GgmlType type, const void* src, float* dst, int64_t n) {
  CheckSupported(type, n);
  const uint8_t* in = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(dst, in, static_cast<size_t>(n) * sizeof(float));
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(LoadU16(in + 2 * i));
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(LoadU16(in + 2 * i));
      return;
    case GgmlType::kQ8_0:
      for (int64_t b = 0; b < n / kQk; ++b) {
        DequantizeBlockQ8_0(in + b * kQ8_0BlockBytes, dst + b * kQk);
      }
      return;
    case GgmlType::kQ4_0:
      for (int64_t b = 0; b < n / kQk; ++b) {
        DequantizeBlockQ4_0(in + b * kQ4_0BlockBytes, dst + b * kQk);
      }
      return;
    default:
      std::abort();  // Unreachable: CheckSupported admits only the types above.
  }
}

void QuantizeRow(GgmlType type, const float* src, void* dst, int64_t n) {
  CheckSupported(type, n);
  uint8_t* out = static_cast<uint8_t*>(dst);
  switch (type) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) StoreU16(out + 2 * i, FloatToHalf(src[i]));
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) StoreU16(out + 2 * i, FloatToBf16(src[i]));
      return;
    case GgmlType::kQ8_0:
      for (int64_t b = 0; b < n / kQk; ++b) {
        QuantizeBlockQ8_0(src + b * kQk, out + b * kQ8_0BlockBytes);
      }
      return;
    case GgmlType::kQ4_0:
      for (int64_t b = 0; b < n / kQk; ++b) {
        QuantizeBlockQ4_0(src + b * kQk, out + b * kQ4_0BlockBytes);
      }
      return;
    default:
      std::abort();
  }
}

double DotRow(GgmlType type, const void* row, const float* x, int64_t n) {
  CheckSupported(type, n);
  // Decode a chunk at a time; 256 is a multiple of every supported block size, so each chunk
  // starts on a block boundary.
  constexpr int64_t kChunk = 256;
  const GgmlTypeTraits& traits = TraitsOf(type);
  const uint8_t* in = static_cast<const uint8_t*>(row);
  float buf[kChunk];
  double sum = 0.0;
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    DequantizeRow(type, in + i / traits.block_size * traits.type_size, buf, len);
    for (int64_t j = 0; j < len; ++j) {
      sum += static_cast<double>(buf[j]) * static_cast<double>(x[i + j]);
    }
  }
  return sum;
}

}  // namespace duet
