// Reading GGUF weight rows (F32, F16, Q8_0, Q4_0) through 16-byte loads, for the matrix kernels
// (matvec.comp, matmul.comp).
//
// The including shader defines, before this file:
//   - exactly one of W_F32, W_F16, W_Q8_0, W_Q4_0;
//   - `uvec4 duet_w16(uint i)`: the i-th 16-byte unit of the bound weight view (a storage buffer
//     of uvec4, or a texel buffer), and `uint duet_w16_count()`: how many units the view holds.
// REQUIRES (host): the view starts at a 16-byte boundary and its size is the weight bytes rounded
// up to a multiple of 16, so every 16-byte window that overlaps a weight byte is inside it.
//
// Blocks of 34 (Q8_0) and 18 (Q4_0) bytes, and F16/F32 rows whose length is not a multiple of 8
// or 4 elements, sit at any even byte offset. They are read as whole aligned 16-byte units and
// shifted into place in registers (DUET_SHIFTED_WORD): one wide load is far cheaper than several
// narrow ones, on GPUs (fewer memory transactions) and on CPU drivers such as lavapipe (each
// load instruction costs a per-lane loop).
//
// Everything works on "units" of 32 consecutive elements of one row (one Q8_0/Q4_0 block), and
// a unit is consumed in 8 steps of 4 elements: step i covers elements 4i..4i+3 of the unit.
#ifndef DUET_DEQUANT_BLOCKS_GLSL_
#define DUET_DEQUANT_BLOCKS_GLSL_

#define DUET_UNIT 32u

// Word `o + i` of the window w0..w(n-1) for a per-lane o in 0..3, as a select chain (dynamic
// indexing of a register array would go through scratch memory on most compilers).
uint duet_pick4(uint a, uint b, uint c, uint d, uint o) {
  return o == 0u ? a : (o == 1u ? b : (o == 2u ? c : d));
}

// The 32-bit word at byte offset 4 * i + s of the little-endian byte window held in `w` (s even,
// 0..14): a funnel shift of words (o + i, o + i + 1) with o = s / 4.
#define DUET_SHIFTED_WORD(w, i, s)                                                       \
  ((((s) & 2u) == 0u)                                                                    \
       ? duet_pick4(w[(i)], w[(i) + 1], w[(i) + 2], w[(i) + 3], (s) >> 2u)               \
       : ((duet_pick4(w[(i)], w[(i) + 1], w[(i) + 2], w[(i) + 3], (s) >> 2u) >> 16u) |   \
          (duet_pick4(w[(i) + 1], w[(i) + 2], w[(i) + 3], w[(i) + 4], (s) >> 2u) << 16u)))

// 16 bytes starting at byte offset `o` (even) of the weight view, as 4 little-endian words.
// `aligned` (a specialization constant: every o is a multiple of 16) reads one unit; otherwise
// two are read and shifted (the second clamped to the view: bytes past the weights are never
// used).
uvec4 duet_w16_at(uint o, bool aligned) {
  const uint idx = o >> 4u;
  const uint s = o & 15u;
  const uvec4 a = duet_w16(idx);
  if (aligned) return a;
  const uvec4 b = duet_w16(min(idx + 1u, duet_w16_count() - 1u));
  const uint w[8] = uint[8](a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
  return uvec4(DUET_SHIFTED_WORD(w, 0, s), DUET_SHIFTED_WORD(w, 1, s),
               DUET_SHIFTED_WORD(w, 2, s), DUET_SHIFTED_WORD(w, 3, s));
}

// Four int8 lanes of a word as floats (byte 0 in .x).
vec4 duet_i8x4(uint word) {
  return vec4(ivec4(word << 24u, word << 16u, word << 8u, word) >> 24);
}

// Four 4-bit lanes (bits 0-3 of each byte when hi == 0, bits 4-7 when hi == 4) minus 8.
vec4 duet_nib4(uint word, uint hi) {
  const uint n = (word >> hi) & 0x0f0f0f0fu;
  return vec4(uvec4(n & 0xffu, (n >> 8u) & 0xffu, (n >> 16u) & 0xffu, n >> 24u)) - 8.0;
}

#if defined(W_Q8_0)
#define DUET_BLOCK_BYTES 34u
// The raw data of one Q8_0 block (32 weights) held in registers: scale and 8 words of int8.
struct DuetUnit {
  float d;
  uint q[8];
};
// The block whose 34 bytes start at byte s (even, 0..14) of the 48-byte window a | b | c.
DuetUnit duet_unit_from(uvec4 a, uvec4 b, uvec4 c, uint s) {
  const uint w[12] = uint[12](a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w, c.x, c.y, c.z, c.w);
  DuetUnit u;
  const uint first = DUET_SHIFTED_WORD(w, 0, s);  // d | q0 << 16 | q1 << 24
  u.d = unpackHalf2x16(first).x;
  // The quants start 2 bytes in: word j = bytes s + 2 + 4j .. s + 5 + 4j.
  const uint t = s + 2u;  // 2..16, even
  const uint ti = t >> 2u;  // 0..4
  [[unroll]] for (uint j = 0u; j < 8u; ++j) {
    // ti == 4 only when t == 16, which is word aligned.
    const uint lo = ti == 4u ? w[j + 4] : duet_pick4(w[j], w[j + 1], w[j + 2], w[j + 3], ti);
    const uint hi = duet_pick4(w[j + 1], w[j + 2], w[j + 3], w[j + 4], ti);
    u.q[j] = (t & 2u) == 0u ? lo : ((lo >> 16u) | (hi << 16u));
  }
  return u;
}
// The block at byte offset o (even) of the view, read as the 3 aligned units that cover it.
DuetUnit duet_load_unit_at(uint o) {
  const uint idx = o >> 4u;
  return duet_unit_from(duet_w16(idx), duet_w16(idx + 1u), duet_w16(idx + 2u), o & 15u);
}
// Elements 4*step .. 4*step+3 of the unit as stored (the quants, unscaled).
vec4 duet_unit_raw(DuetUnit u, uint step) { return duet_i8x4(u.q[step]); }
// The same, dequantized.
vec4 duet_unit_step(DuetUnit u, uint step) { return u.d * duet_unit_raw(u, step); }

#elif defined(W_Q4_0)
#define DUET_BLOCK_BYTES 18u
struct DuetUnit {
  float d;
  uint q[4];  // 16 bytes of nibbles: byte j = element j (low) | element j + 16 (high)
};
// The block whose 18 bytes start at byte s (even, 0..14) of the 32-byte window a | b.
DuetUnit duet_unit_from(uvec4 a, uvec4 b, uint s) {
  const uint w[8] = uint[8](a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
  DuetUnit u;
  u.d = unpackHalf2x16(DUET_SHIFTED_WORD(w, 0, s)).x;
  const uint t = s + 2u;
  const uint ti = t >> 2u;  // 0..4
  [[unroll]] for (uint j = 0u; j < 4u; ++j) {
    // ti == 4 only when t == 16, which is word aligned.
    const uint lo = ti == 4u ? w[j + 4] : duet_pick4(w[j], w[j + 1], w[j + 2], w[j + 3], ti);
    const uint hi = duet_pick4(w[j + 1], w[j + 2], w[j + 3], w[j + 4], ti);
    u.q[j] = (t & 2u) == 0u ? lo : ((lo >> 16u) | (hi << 16u));
  }
  return u;
}
// The block at byte offset o (even) of the view; the 2 aligned units around it always cover it.
DuetUnit duet_load_unit_at(uint o) {
  const uint idx = o >> 4u;
  return duet_unit_from(duet_w16(idx), duet_w16(idx + 1u), o & 15u);
}
// Steps 0..3 are the low nibbles of words 0..3 (elements 0..15), steps 4..7 the high nibbles;
// unscaled (the quants minus 8), then dequantized.
vec4 duet_unit_raw(DuetUnit u, uint step) { return duet_nib4(u.q[step & 3u], (step >> 2u) * 4u); }
vec4 duet_unit_step(DuetUnit u, uint step) { return u.d * duet_unit_raw(u, step); }

#endif  // W_Q8_0 / W_Q4_0

#endif  // DUET_DEQUANT_BLOCKS_GLSL_
