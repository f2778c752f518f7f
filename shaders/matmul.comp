#version 450
// Prefill matrix product:
//   Y[t, row] = sum_c W[row, c] * X[t, c]     for t < n_tokens, row < rows
// W is a GGUF weight in its file layout (see matvec.comp): `rows` rows of `in_dim` elements
// encoded as one of W_F32 | W_F16 | W_Q8_0 | W_Q4_0, dequantized on the fly.
//
// Bindings (set 0):
//   0 w: the rows of this dispatch as 16-byte units; starts 16-byte aligned, size padded to a
//        multiple of 16 (see dequant_blocks.glsl).
//   1 x: f32 [n_tokens, x_stride] read as vec4; size padded to a multiple of 16 bytes.
//   2 y: f32, Y[t, row] at y[t * y_stride + y_offset + row]; ACCUMULATE adds to what y holds
//        (a residual add) instead of overwriting it.
// Launch: Groups{ceil(rows / TILE_ROWS), ceil(n_tokens / TILE_TOKENS)}.
//
// A workgroup computes a TILE_ROWS x TILE_TOKENS tile of Y; each invocation a THREAD_ROWS x
// THREAD_TOKENS sub-tile held in registers (rows tr + i * TILE_ROWS / THREAD_ROWS, tokens
// tt + j * TILE_TOKENS / THREAD_TOKENS, so neighbouring invocations read neighbouring shared
// memory). The reduction dimension advances 32 elements (one block) at a time, accumulating in
// f32. WG must equal (TILE_ROWS / THREAD_ROWS) * (TILE_TOKENS / THREAD_TOKENS).
//   SHARED_TILES (GPUs): per step the workgroup stages the W tile, dequantized once, and the X
//     tile in shared memory, then every invocation reads its operands from there.
//   !SHARED_TILES (CPU drivers such as lavapipe, where shared memory is no faster than the
//     global buffers and each invocation is a SIMD lane): every invocation reads its own rows'
//     blocks and its tokens' x directly, with no barriers.
// W_TEXEL / X_TEXEL: texel-buffer reads, as in matvec.comp.
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint TILE_ROWS = 32;
layout(constant_id = 2) const uint TILE_TOKENS = 32;
layout(constant_id = 3) const uint THREAD_ROWS = 4;
layout(constant_id = 4) const uint THREAD_TOKENS = 4;
layout(constant_id = 5) const bool SHARED_TILES = true;
// Every token of x starts at a multiple of 4 elements (see matmul_io.glsl).
layout(constant_id = 6) const bool X_ALIGNED = true;
layout(constant_id = 7) const bool ACCUMULATE = false;
// F32/F16 only: every row starts at a multiple of 16 bytes (row_bytes % 16 == 0). Last, because
// the quantized variants never read it (their SPIR-V lacks it).
layout(constant_id = 8) const bool W_ALIGNED = true;
layout(local_size_x_id = 0) in;

#if defined(W_TEXEL)
layout(set = 0, binding = 0) uniform usamplerBuffer w_tex;
uvec4 duet_w16(uint i) { return texelFetch(w_tex, int(i)); }
uint duet_w16_count() { return uint(textureSize(w_tex)); }
#else
layout(std430, set = 0, binding = 0) readonly buffer W { uvec4 w16[]; };
uvec4 duet_w16(uint i) { return w16[i]; }
uint duet_w16_count() { return uint(w16.length()); }
#endif
#if defined(X_TEXEL)
layout(set = 0, binding = 1) uniform samplerBuffer x_tex;
vec4 x4_at(uint i) { return texelFetch(x_tex, int(i)); }
uint x4_count() { return uint(textureSize(x_tex)); }
#else
layout(std430, set = 0, binding = 1) readonly buffer X { vec4 x4[]; };
vec4 x4_at(uint i) { return x4[i]; }
uint x4_count() { return uint(x4.length()); }
#endif
layout(std430, set = 0, binding = 2) buffer Y { float y[]; };

layout(push_constant) uniform Push {
  uint in_dim;     // elements per row
  uint rows;       // rows of this dispatch
  uint row_bytes;  // bytes per encoded row
  uint x_stride;   // elements between tokens of x
  uint x_offset;   // element offset of the first token in the bound x
  uint y_stride;   // elements between tokens of y
  uint y_offset;   // element offset of this dispatch's first row in each token of y
  uint n_tokens;
} pc;

#include "dequant_blocks.glsl"

const uint RM = THREAD_ROWS;
const uint RN = THREAD_TOKENS;
const uint ROW_THREADS = TILE_ROWS / THREAD_ROWS;
// Shared rows are 8 vec4 (one block) plus one of padding, so that invocations reading
// consecutive rows at the same step hit different banks.
const uint SH_STRIDE = 9u;
shared vec4 w_tile[SHARED_TILES ? TILE_ROWS * SH_STRIDE : 1u];
shared vec4 x_tile[SHARED_TILES ? TILE_TOKENS * SH_STRIDE : 1u];

#include "matmul_io.glsl"

#if defined(W_F32) || defined(W_F16)
// Elements c .. c + 3 (F32) or c .. c + 7 (F16) of row `row` as 16 raw bytes; zero (and no
// read: the row may end the view) when c >= in_dim.
uvec4 w_raw(uint row, uint c) {
  if (c >= pc.in_dim) return uvec4(0u);
#if defined(W_F32)
  return duet_w16_at(row * pc.row_bytes + c * 4u, W_ALIGNED);
#else
  return duet_w16_at(row * pc.row_bytes + c * 2u, W_ALIGNED);
#endif
}

// Step `step` of unit u from the raw bytes of its load (F16: a load holds two steps), zero past
// in_dim.
vec4 w_decode(uvec4 raw, uint u, uint step) {
  const uint c = u * DUET_UNIT + step * 4u;
#if defined(W_F32)
  vec4 v = uintBitsToFloat(raw);
#else
  const uvec2 h = (step & 1u) == 0u ? raw.xy : raw.zw;
  vec4 v = vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y));
#endif
  if (c + 4u > pc.in_dim) {
    v = mix(vec4(0.0), v, lessThan(uvec4(c) + uvec4(0u, 1u, 2u, 3u), uvec4(pc.in_dim)));
  }
  return v;
}

#if defined(W_F32)
const uint STEPS_PER_LOAD = 1u;
#else
const uint STEPS_PER_LOAD = 2u;
#endif
#endif

// x of token t, elements 4 * step .. of unit u, zero past in_dim.
vec4 x_step(uint t, uint u, uint step) {
  const uint c = u * DUET_UNIT + step * 4u;
  if (c >= pc.in_dim) return vec4(0.0);  // no read: the last token may end the view
  vec4 v = load_x4(pc.x_offset + t * pc.x_stride + c);
  if (c + 4u > pc.in_dim) {
    v = mix(vec4(0.0), v, lessThan(uvec4(c) + uvec4(0u, 1u, 2u, 3u), uvec4(pc.in_dim)));
  }
  return v;
}

void main() {
  const uint tid = gl_LocalInvocationIndex;
  const uint tr = tid % ROW_THREADS;
  const uint tt = tid / ROW_THREADS;
  const uint tile_row0 = gl_WorkGroupID.x * TILE_ROWS;
  const uint tile_tok0 = gl_WorkGroupID.y * TILE_TOKENS;
  const uint num_units = (pc.in_dim + DUET_UNIT - 1u) / DUET_UNIT;

  // This invocation's rows and tokens, clamped (results past the ends are not stored).
  uint row_c[RM];
  uint tok_c[RN];
  [[unroll]] for (uint i = 0u; i < RM; ++i) {
    row_c[i] = min(tile_row0 + tr + i * ROW_THREADS, pc.rows - 1u);
  }
  [[unroll]] for (uint j = 0u; j < RN; ++j) {
    tok_c[j] = min(tile_tok0 + tt + j * (TILE_TOKENS / RN), pc.n_tokens - 1u);
  }

  float acc[RM][RN];
  [[unroll]] for (uint i = 0u; i < RM; ++i) {
    [[unroll]] for (uint j = 0u; j < RN; ++j) acc[i][j] = 0.0;
  }

  for (uint u = 0u; u < num_units; ++u) {
    if (SHARED_TILES) {
      // Stage: each W row's block decoded once; x copied.
      for (uint r = tid; r < TILE_ROWS; r += WG) {
        const uint row = min(tile_row0 + r, pc.rows - 1u);
#if defined(W_Q8_0) || defined(W_Q4_0)
        const DuetUnit wu = duet_load_unit_at(row * pc.row_bytes + u * DUET_BLOCK_BYTES);
        [[unroll]] for (uint s = 0u; s < 8u; ++s) w_tile[r * SH_STRIDE + s] = duet_unit_step(wu, s);
#else
        [[unroll]] for (uint s = 0u; s < 8u; s += STEPS_PER_LOAD) {
          const uvec4 raw = w_raw(row, u * DUET_UNIT + s * 4u);
          [[unroll]] for (uint k = 0u; k < STEPS_PER_LOAD; ++k) {
            w_tile[r * SH_STRIDE + s + k] = w_decode(raw, u, s + k);
          }
        }
#endif
      }
      for (uint k = tid; k < TILE_TOKENS * 8u; k += WG) {
        const uint t = k / 8u;
        const uint s = k % 8u;
        x_tile[t * SH_STRIDE + s] = x_step(min(tile_tok0 + t, pc.n_tokens - 1u), u, s);
      }
      barrier();
      [[unroll]] for (uint s = 0u; s < 8u; ++s) {
        vec4 xv[RN];
        [[unroll]] for (uint j = 0u; j < RN; ++j) {
          xv[j] = x_tile[(tt + j * (TILE_TOKENS / RN)) * SH_STRIDE + s];
        }
        [[unroll]] for (uint i = 0u; i < RM; ++i) {
          const vec4 wv = w_tile[(tr + i * ROW_THREADS) * SH_STRIDE + s];
          [[unroll]] for (uint j = 0u; j < RN; ++j) acc[i][j] += dot(wv, xv[j]);
        }
      }
      barrier();
    } else {
#if defined(W_Q8_0) || defined(W_Q4_0)
      DuetUnit wu[RM];
      [[unroll]] for (uint i = 0u; i < RM; ++i) {
        wu[i] = duet_load_unit_at(row_c[i] * pc.row_bytes + u * DUET_BLOCK_BYTES);
      }
#else
      uvec4 raw[RM];
#endif
      [[unroll]] for (uint s = 0u; s < 8u; ++s) {
        vec4 xv[RN];
        [[unroll]] for (uint j = 0u; j < RN; ++j) xv[j] = x_step(tok_c[j], u, s);
        [[unroll]] for (uint i = 0u; i < RM; ++i) {
#if defined(W_Q8_0) || defined(W_Q4_0)
          const vec4 wv = duet_unit_step(wu[i], s);
#else
          if (s % STEPS_PER_LOAD == 0u) raw[i] = w_raw(row_c[i], u * DUET_UNIT + s * 4u);
          const vec4 wv = w_decode(raw[i], u, s);
#endif
          [[unroll]] for (uint j = 0u; j < RN; ++j) acc[i][j] += dot(wv, xv[j]);
        }
      }
    }
  }

  [[unroll]] for (uint i = 0u; i < RM; ++i) {
    const uint row = tile_row0 + tr + i * ROW_THREADS;
    [[unroll]] for (uint j = 0u; j < RN; ++j) {
      const uint t = tile_tok0 + tt + j * (TILE_TOKENS / RN);
      if (row < pc.rows && t < pc.n_tokens) {
        const uint at = t * pc.y_stride + pc.y_offset + row;
        y[at] = ACCUMULATE ? y[at] + acc[i][j] : acc[i][j];
      }
    }
  }
}
