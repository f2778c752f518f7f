// FP8 E4M3 ("e4m3fn") codec, bit-identical to common/model/fp8.h (tests/vk checks every code
// and a sweep of f32 inputs): S.EEEE.MMM, bias 7, no infinities, S.1111.111 is NaN, largest
// finite 448. Encoding rounds to nearest even and saturates to +-448; NaN -> 0x7F | sign.
// Codes are uints in 0..255.
#ifndef DUET_FP8_GLSL_
#define DUET_FP8_GLSL_

float duet_fp8_e4m3_to_f32(uint code) {
  const uint exponent = (code >> 3u) & 15u;
  const uint mantissa = code & 7u;
  float magnitude;
  if (exponent == 15u && mantissa == 7u) {
    magnitude = uintBitsToFloat(0x7fc00000u);  // quiet NaN
  } else if (exponent == 0u) {
    magnitude = float(mantissa) * (1.0 / 512.0);
  } else {
    magnitude = uintBitsToFloat(((exponent + 120u) << 23u) | (mantissa << 20u));
  }
  return (code & 0x80u) != 0u ? -magnitude : magnitude;
}

uint duet_f32_to_fp8_e4m3(float x) {
  const uint bits = floatBitsToUint(x);
  const uint sign = (bits >> 24u) & 0x80u;
  const uint abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return sign | 0x7fu;  // NaN
  if (abs_bits >= 0x43e00000u) return sign | 0x7eu;  // >= 448 (and inf) saturate
  if (abs_bits < 0x3c800000u) {
    // Subnormal range: |x| * 2^9 rounded to nearest even, done in integers so no float
    // rounding mode is assumed: |x| = m * 2^(e - 150) with the implicit bit in m.
    const uint e = abs_bits >> 23u;
    if (e < 113u) return sign;  // |x| < 2^-14 rounds to 0 (below half the smallest step)
    const uint m = (abs_bits & 0x7fffffu) | 0x800000u;
    const uint shift = 150u - 9u - e;  // code = m >> shift, rounded; shift in 21..28 here
    const uint code = m >> shift;
    const uint rest = m & ((1u << shift) - 1u);
    const uint half_step = 1u << (shift - 1u);
    const bool up = rest > half_step || (rest == half_step && (code & 1u) != 0u);
    return sign | (code + (up ? 1u : 0u));
  }
  const uint exponent = (abs_bits >> 23u) - 120u;
  const uint mantissa = abs_bits & 0x7fffffu;
  uint code = (exponent << 3u) | (mantissa >> 20u);
  const uint rest = mantissa & 0xfffffu;
  if (rest > 0x80000u || (rest == 0x80000u && (code & 1u) != 0u)) code += 1u;
  return sign | min(code, 0x7eu);
}

#endif  // DUET_FP8_GLSL_
