// FP8 E4M3 ("e4m3fn" of the OCP 8-bit floating point spec), the KV cache's quantized type.
//
// Code layout S.EEEE.MMM, exponent bias 7. Normal codes (E = 1..15) are (1 + M/8) * 2^(E-7),
// subnormal codes (E = 0) are M/8 * 2^-6 = M * 2^-9. There are no infinities: S.1111.111 is
// NaN, so the largest finite magnitude is 1.75 * 2^8 = 448 (code 0x7E).
//
// Encoding rounds to nearest, ties to even, and saturates: every finite value of magnitude
// >= 448 and +-infinity encode as +-448. NaN encodes as NaN (0x7F, or 0xFF when its sign bit
// is set). -0.0 encodes as 0x80. shaders/include/fp8.glsl implements the same rules and must
// stay bit-identical to this file (tests/vk checks it).
//
// Scaled blocks: the KV cache stores a group of values (one block of one KV head) as
// q[i] = FloatToFp8E4M3(x[i] * inv) with scale = Fp8BlockScale(amax of |x|) and inv = 1 / scale
// (each quotient rounded to f32, so one division per block), and reads them back as
// Fp8E4M3ToFloat(q[i]) * scale, all in f32. The shaders compute the same bits.
#ifndef DUET_COMMON_MODEL_FP8_H_
#define DUET_COMMON_MODEL_FP8_H_

#include <cstdint>

namespace duet {

inline constexpr float kFp8E4M3Max = 448.0f;
inline constexpr uint8_t kFp8E4M3MaxCode = 0x7E;
inline constexpr uint8_t kFp8E4M3NaNCode = 0x7F;

// f32 -> E4M3 with round-to-nearest-even and saturation (see the file comment).
uint8_t FloatToFp8E4M3(float x);
// E4M3 -> f32, exact for every code; 0x7F and 0xFF give a quiet NaN.
float Fp8E4M3ToFloat(uint8_t code);

// The scale of a block whose largest magnitude is `amax` (>= 0): amax / 448 in f32, or 1 when
// amax is 0 so an all-zero block stays exactly zero.
float Fp8BlockScale(float amax);

// Largest |x[i]| over n values (f32; NaN values are skipped).
float AbsMax(const float* x, int64_t n);

// q[i] = FloatToFp8E4M3(x[i] * (1 / scale)) for i < n, the reciprocal rounded to f32 first.
// REQUIRES: scale > 0.
void QuantizeFp8(const float* x, int64_t n, float scale, uint8_t* q);
// x[i] = Fp8E4M3ToFloat(q[i]) * scale for i < n.
void DequantizeFp8(const uint8_t* q, int64_t n, float scale, float* x);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_FP8_H_
