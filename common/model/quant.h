// Element codecs: IEEE half, bfloat16, and GGUF's Q8_0 and Q4_0 blocks, bit-exact with ggml.
//
// Q8_0 block (34 bytes, 32 weights): f16 scale d, then 32 x int8 q; x = d * q.
// Q4_0 block (18 bytes, 32 weights): f16 scale d, then 16 bytes of nibbles; byte j holds
//   element j in its low nibble and element j+16 in its high nibble; x = d * (nibble - 8).
#ifndef DUET_COMMON_MODEL_QUANT_H_
#define DUET_COMMON_MODEL_QUANT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "common/model/ggml_types.h"

namespace duet {

// Round-to-nearest-even conversions, handling subnormals, infinities and NaN.
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);
// bfloat16 as ggml does it: round to nearest even, NaN kept quiet.
uint16_t FloatToBf16(float f);
float Bf16ToFloat(uint16_t b);

// Decodes `n` elements of `type` from `src` into `dst`.
// REQUIRES: TraitsOf(type).supported and n % block_size == 0.
void DequantizeRow(GgmlType type, const void* src, float* dst, int64_t n);
// Encodes `n` floats into `dst` (GgmlRowBytes(type, n) bytes), the way ggml's reference
// quantizers (quantize_row_q8_0_ref, quantize_row_q4_0_ref) do.
// REQUIRES: TraitsOf(type).supported and n % block_size == 0.
void QuantizeRow(GgmlType type, const float* src, void* dst, int64_t n);

// Dot product of one encoded row with an f32 vector, accumulated in double.
// REQUIRES as DequantizeRow.
double DotRow(GgmlType type, const void* row, const float* x, int64_t n);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_QUANT_H_
