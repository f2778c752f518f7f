// The paged KV cache as the kernels see it (common/kv/paged_kv.h and docs/kv-cache.md are the
// design; common/vk/ops_attention.h builds the buffers).
//
// Sequence table `seqs` (uint words): for each sequence s of the batch, DUET_SEQ_WORDS words at
// s * DUET_SEQ_WORDS:
//   +0 q_offset      first row of this sequence's queries / pending K,V in the batch tensors
//   +1 num_new       pending positions (queries) of this step (kv_write: positions to commit)
//   +2 num_cached    committed positions; pending position i is num_cached + i
//   +3 tail_slot     FP8: the sequence's tail slot
//   +4 table_offset  word index in `seqs` of the sequence's block table (int32 block ids)
//   +5..7            unused (0)
//
// Cache data, per layer and K|V: [num_blocks][num_kv_heads][block_size][head_dim] of
//   KV_F32: f32, bound as vec4[];  KV_F16: f16, bound as uvec2[] (4 halves);
//   KV_FP8: E4M3 bytes, bound as uint[] (4 codes), with f32 scales [num_blocks][num_kv_heads].
// FP8 tail (f16, uvec2[]): [num_tail_slots][num_layers][K|V][num_kv_heads][block_size][head_dim].
//
// f16 values are rounded from f32 with duet_f32_to_f16 (round to nearest even in integer ops),
// bit-identical to common/model/quant.h's FloatToHalf on every device: GLSL's packHalf2x16
// leaves the rounding mode to the implementation.
#ifndef DUET_KV_CACHE_GLSL_
#define DUET_KV_CACHE_GLSL_

#define DUET_SEQ_WORDS 8u
#define DUET_SEQ_Q_OFFSET 0u
#define DUET_SEQ_NUM_NEW 1u
#define DUET_SEQ_NUM_CACHED 2u
#define DUET_SEQ_TAIL_SLOT 3u
#define DUET_SEQ_TABLE_OFFSET 4u

// IEEE half bits of x, round to nearest even; overflow -> inf, NaN -> quiet NaN.
uint duet_f32_to_f16(float x) {
  const uint bits = floatBitsToUint(x);
  const uint sign = (bits >> 16u) & 0x8000u;
  const uint a = bits & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;        // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;       // >= 65520 rounds to inf
  if (a >= 0x38800000u) {                            // normal half (>= 2^-14)
    const uint r = a + 0xfffu + ((a >> 13u) & 1u);   // round at bit 13, ties to even
    return sign | ((r - 0x38000000u) >> 13u);        // rebias 127 -> 15
  }
  if (a < 0x33000000u) return sign;                  // < 2^-25: rounds to 0 (2^-25 ties to 0)
  // Subnormal half: |x| / 2^-24 = m >> (126 - e), with the implicit bit in m.
  const uint e = a >> 23u;
  const uint m = (a & 0x7fffffu) | 0x800000u;
  const uint shift = 126u - e;  // 14..24
  const uint code = m >> shift;
  const uint rest = m & ((1u << shift) - 1u);
  const uint half_step = 1u << (shift - 1u);
  const bool up = rest > half_step || (rest == half_step && (code & 1u) != 0u);
  return sign | (code + (up ? 1u : 0u));
}

// Four f32 -> four halves packed as (lo | hi << 16) pairs.
uvec2 duet_pack_f16x4(vec4 v) {
  return uvec2(duet_f32_to_f16(v.x) | (duet_f32_to_f16(v.y) << 16u),
               duet_f32_to_f16(v.z) | (duet_f32_to_f16(v.w) << 16u));
}
vec4 duet_unpack_f16x4(uvec2 h) { return vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y)); }
// x rounded to the nearest half (what storing it as f16 and reading it back gives).
vec4 duet_round_f16x4(vec4 v) { return duet_unpack_f16x4(duet_pack_f16x4(v)); }

// a / b correctly rounded (round to nearest even), by integer long division of the mantissas:
// GLSL's `/` may be off by a few ulp (Vulkan allows 2.5), and FP8 scales must be bit-identical
// to the CPU's. REQUIRES: a, b and a / b positive, finite and normal (true for KV scales:
// amax is an f16 value >= 2^-24, so amax / 448 and its reciprocal stay normal).
float duet_div_rn(float a, float b) {
  const uint ua = floatBitsToUint(a);
  const uint ub = floatBitsToUint(b);
  int exponent = int(ua >> 23u) - int(ub >> 23u) + 127;
  uint ma = (ua & 0x7fffffu) | 0x800000u;
  const uint mb = (ub & 0x7fffffu) | 0x800000u;
  if (ma < mb) {
    ma <<= 1u;
    exponent -= 1;
  }
  // 25 quotient bits: 24 significant ones and a rounding bit; the remainder is the sticky bit.
  uint q = 0u;
  uint rem = ma;
  for (int i = 0; i < 25; ++i) {
    q <<= 1u;
    if (rem >= mb) {
      rem -= mb;
      q |= 1u;
    }
    rem <<= 1u;
  }
  uint mantissa = q >> 1u;
  if ((q & 1u) != 0u && (rem != 0u || (mantissa & 1u) != 0u)) mantissa += 1u;
  if (mantissa == 0x1000000u) {
    mantissa >>= 1u;
    exponent += 1;
  }
  return uintBitsToFloat((uint(exponent) << 23u) | (mantissa & 0x7fffffu));
}

// The FP8 scale of a tile whose largest magnitude is amax (common/model/fp8.h Fp8BlockScale).
float duet_fp8_scale(float amax) { return amax > 0.0 ? duet_div_rn(amax, 448.0) : 1.0; }

#endif  // DUET_KV_CACHE_GLSL_
