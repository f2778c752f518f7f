#include "common/model/fp8.h"

#include <bit>
#include <cmath>
#include <limits>

namespace duet {
namespace {

constexpr uint32_t kF32AbsMask = 0x7FFFFFFFu;
constexpr uint32_t kF32Inf = 0x7F800000u;
constexpr uint32_t kF32Of448 = 0x43E00000u;          // 448.0f
constexpr uint32_t kF32MinNormalE4M3 = 0x3C800000u;  // 2^-6, the smallest normal E4M3 value

}  // namespace

uint8_t FloatToFp8E4M3(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t abs_bits = bits & kF32AbsMask;
  if (abs_bits > kF32Inf) return sign | kFp8E4M3NaNCode;
  // Everything at or above 448 saturates (the only values in [448, 464] that would round to a
  // finite code round to 448 itself; above 464 the rounded value is not representable).
  if (abs_bits >= kF32Of448) return sign | kFp8E4M3MaxCode;
  if (abs_bits < kF32MinNormalE4M3) {
    // Subnormal range: the code is |x| / 2^-9 rounded to an integer in [0, 8]; 8 is the
    // smallest normal code (0x08), so the carry is already right. The scaling is exact.
    const float scaled = std::bit_cast<float>(abs_bits) * 512.0f;
    const float rounded = std::nearbyint(scaled);  // default rounding mode: ties to even
    return sign | static_cast<uint8_t>(rounded);
  }
  // Normal: rebias the exponent (127 -> 7), keep 3 mantissa bits, round the other 20 to nearest
  // even. A carry out of the mantissa correctly bumps the exponent.
  const uint32_t exponent = (abs_bits >> 23) - 127 + 7;  // 1..15 here
  const uint32_t mantissa = abs_bits & 0x7FFFFFu;
  uint32_t code = (exponent << 3) | (mantissa >> 20);
  const uint32_t rest = mantissa & 0xFFFFFu;
  constexpr uint32_t kHalf = 0x80000u;
  if (rest > kHalf || (rest == kHalf && (code & 1u) != 0)) ++code;
  if (code > kFp8E4M3MaxCode) code = kFp8E4M3MaxCode;  // unreachable below 448; kept for safety
  return sign | static_cast<uint8_t>(code);
}

float Fp8E4M3ToFloat(uint8_t code) {
  const bool negative = (code & 0x80u) != 0;
  const uint32_t exponent = (code >> 3) & 0xFu;
  const uint32_t mantissa = code & 0x7u;
  float magnitude;
  if (exponent == 0xF && mantissa == 0x7) {
    magnitude = std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = static_cast<float>(mantissa) * 0x1p-9f;
  } else {
    magnitude = std::bit_cast<float>(((exponent + 127 - 7) << 23) | (mantissa << 20));
  }
  return negative ? -magnitude : magnitude;
}

float Fp8BlockScale(float amax) { return amax > 0.0f ? amax / kFp8E4M3Max : 1.0f; }

float AbsMax(const float* x, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > amax) amax = a;  // false for NaN
  }
  return amax;
}

void QuantizeFp8(const float* x, int64_t n, float scale, uint8_t* q) {
  const float inv_scale = 1.0f / scale;
  for (int64_t i = 0; i < n; ++i) q[i] = FloatToFp8E4M3(x[i] * inv_scale);
}

void DequantizeFp8(const uint8_t* q, int64_t n, float scale, float* x) {
  for (int64_t i = 0; i < n; ++i) x[i] = Fp8E4M3ToFloat(q[i]) * scale;
}

}  // namespace duet
