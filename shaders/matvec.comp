#version 450
// Decode-time matrix product for a few activation vectors ("skinny" multiply):
//   y[b, row] = sum_c W[row, c] * x[b, c]     for b < NUM_VECS, row < rows
// W is a GGUF weight in its file layout: `rows` rows of `in_dim` elements, each row encoded as
// one of W_F32 | W_F16 | W_Q8_0 | W_Q4_0, back to back (row_bytes = GgmlRowBytes(type, in_dim)).
//
// Bindings (set 0):
//   0 w: the rows of this dispatch as 16-byte units; starts 16-byte aligned, size padded to a
//        multiple of 16 (see dequant_blocks.glsl).
//   1 x: f32, vector b at element x_offset + b * x_stride, read as vec4; size padded to 16.
//   2 y: f32, y[b * y_stride + y_offset + row] for rows < split1 (all rows of a plain call).
//   3 y1, 4 y2: f32, the rows of a split call (a fused projection such as q | k | v): row r in
//        [split1, split2) at y1[b * y1_stride + y1_offset + r - split1], rows from split2 on in
//        y2 likewise. A plain call binds y again at both.
// Launch: Groups1D(ceil(rows / ROWS_PER_WG)), ROWS_PER_WG = OUT_R * WG / K_LANES (below).
//
// EPILOGUE (what is stored for a row's sum s):
//   0 store: s;
//   1 accumulate: y += s (a residual add; only y, read and written by the lane that owns it);
//   2 SwiGLU: the weight holds 2 * rows rows, gate rows then up rows; output row r is
//     silu(s_r) * s_(rows + r), as swiglu.comp computes it. Half of each lane's ROWS_PER_LANE
//     rows are gate rows, the other half the up rows that pair with them.
//
// Mapping: K_LANES consecutive lanes of a subgroup share a row and split it into 32-element
// units (lane k of the group takes units k, k + K_LANES, ...); each lane group walks
// ROWS_PER_LANE rows at once (rows row0 + i * WG / K_LANES), so every x value it loads serves
// ROWS_PER_LANE rows and every weight block serves all NUM_VECS vectors. Sums are f32, combined
// across the K_LANES lanes with subgroupShuffleXor.
//   - K_LANES == 1 suits CPU drivers (lavapipe): a subgroup is one SIMD register of 8 lanes, so
//     8 rows advance in lockstep with no cross-lane reduction, and with X_BROADCAST each x vec4
//     is loaded once per subgroup instead of once per lane.
//   - K_LANES = 8..32 suits GPUs: neighbouring lanes read neighbouring blocks of a row
//     (coalesced), x comes from cache.
// W_TEXEL / X_TEXEL read w (usamplerBuffer over an RGBA32UI view) and x (samplerBuffer over an
// RGBA32F view) through uniform texel buffers instead of storage buffers: the same bytes, but
// on lavapipe a texel fetch costs a tenth of a storage-buffer load. The *_texel variants in
// kernels.table; MatMulConfig::texel_reads picks them (docs/performance.md).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_ballot : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64;       // multiple of the subgroup size
layout(constant_id = 1) const uint K_LANES = 1;   // power of two <= subgroup size
layout(constant_id = 2) const uint NUM_VECS = 1;  // vectors of x (1..8)
layout(constant_id = 3) const uint ROWS_PER_LANE = 1;  // rows each lane group walks at once
// Every vector of x starts at a multiple of 4 elements (see matmul_io.glsl).
layout(constant_id = 4) const bool X_ALIGNED = true;
// K_LANES == 1 only (all lanes of a subgroup need the same x), subgroup size >= 8: x is loaded
// once per subgroup, one vec4 per lane, and handed out with subgroupBroadcast. Pays off where a
// buffer load costs far more than a broadcast (storage buffers on lavapipe); with cheap loads
// (texel buffers) every lane loads its own.
layout(constant_id = 5) const bool X_BROADCAST = false;
// Every row starts at a multiple of 16 bytes (row_bytes % 16 == 0). Quantized rows padded so
// (the Vulkan engine pads them on CPU devices) take the run-of-8-blocks path below.
layout(constant_id = 6) const bool W_ALIGNED = true;
layout(constant_id = 7) const uint EPILOGUE = 0;  // 0 store, 1 accumulate, 2 SwiGLU (above)
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
layout(std430, set = 0, binding = 3) writeonly buffer Y1 { float y1[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Y2 { float y2[]; };

layout(push_constant) uniform Push {
  uint in_dim;     // elements per row
  uint rows;       // rows of this dispatch
  uint row_bytes;  // bytes per encoded row
  uint x_stride;   // elements between the vectors of x
  uint x_offset;   // element offset of the first vector in the bound x
  uint y_stride;   // elements between the vectors of y
  uint y_offset;   // element offset of this dispatch's first row in each vector of y
  uint split1;     // first row stored in y1 (>= rows: none)
  uint y1_stride;
  uint y1_offset;
  uint split2;     // first row stored in y2 (>= rows: none)
  uint y2_stride;
  uint y2_offset;
} pc;

#include "dequant_blocks.glsl"

const uint B = NUM_VECS;
const uint R = ROWS_PER_LANE;
const bool GATED = EPILOGUE == 2u;
// Output rows per lane: all R, or (SwiGLU) the R / 2 gate rows whose up rows the lane also reads.
const uint OUT_R = GATED ? R / 2u : R;
const uint ROWS_PER_WG = OUT_R * (WG / K_LANES);

#include "matmul_io.glsl"

// Quantized rows padded to 16 bytes, one row per lane: read in runs of 8 blocks (below).
#if defined(W_Q8_0) || defined(W_Q4_0)
const bool QUANT_RUNS = K_LANES == 1u && W_ALIGNED;
#else
const bool QUANT_RUNS = false;
#endif

// Stores row `row` of vector b (see the bindings and EPILOGUE above).
void store_y(uint row, uint b, float v) {
  if (row < pc.split1) {
    const uint i = b * pc.y_stride + pc.y_offset + row;
    y[i] = EPILOGUE == 1u ? y[i] + v : v;
  } else if (row < pc.split2) {
    y1[b * pc.y1_stride + pc.y1_offset + (row - pc.split1)] = v;
  } else {
    y2[b * pc.y2_stride + pc.y2_offset + (row - pc.split2)] = v;
  }
}

// Per-invocation state shared with the helpers below (private variables).
float acc[R][B];  // f32 sums of each row (r) and vector (b)
uint row_c[R];    // the rows this lane reads (clamped to the last one)

#if defined(W_Q8_0) || defined(W_Q4_0)
// The quantized run path (QUANT_RUNS): rows start at multiples of 16 bytes, so block k of a run
// of 8 (272 bytes = 17 units for Q8_0, 144 = 9 for Q4_0) starts at byte 2k of a unit, the same
// for every lane, in the unit where block k - 1 ended. That unit stays in registers (carry): 2
// fetches per Q8_0 block instead of 3, 1 per Q4_0 block instead of 2 (fetches are what a
// matvec costs on lavapipe).
uint run_at[R];       // the next unit of each row's run
uvec4 run_carry[R];   // the unit where the previous block ended
DuetUnit blocks[R];   // the current block of each row

// Starts the run of blocks g.. (g a multiple of 8) of every row.
void start_run(uint g) {
  [[unroll]] for (uint r = 0u; r < R; ++r) {
    run_at[r] = (row_c[r] * pc.row_bytes + g * DUET_BLOCK_BYTES) >> 4u;
    run_carry[r] = duet_w16(run_at[r]);
  }
}

// Loads block k of the run into blocks[].
void next_block_of_run(uint k) {
  [[unroll]] for (uint r = 0u; r < R; ++r) {
    const uvec4 b = duet_w16(run_at[r] + 1u);
#if defined(W_Q8_0)
    const uvec4 c = duet_w16(run_at[r] + 2u);
    blocks[r] = duet_unit_from(run_carry[r], b, c, 2u * k);
    run_carry[r] = c;
    run_at[r] += 2u;
#else
    blocks[r] = duet_unit_from(run_carry[r], b, 2u * k);
    run_carry[r] = b;
    run_at[r] += 1u;
#endif
  }
}

// acc += blocks[] (unit u of each row) times x: the 32 products of a block summed unscaled, then
// multiplied by the block's scale once.
void add_block(uint u) {
  const uint lane = gl_SubgroupInvocationID;
  // X_BROADCAST: lane i loads vec4 i % 8 of the unit for every vector.
  vec4 x_unit[B];
  [[unroll]] for (uint b = 0u; b < B; ++b) {
    x_unit[b] = vec4(0.0);
    if (X_BROADCAST) x_unit[b] = load_x4(pc.x_offset + b * pc.x_stride + u * DUET_UNIT + (lane % 8u) * 4u);
  }
  float part[R][B];
  [[unroll]] for (uint step = 0u; step < 8u; ++step) {
    const uint c = u * DUET_UNIT + step * 4u;
    vec4 xv[B];
    [[unroll]] for (uint b = 0u; b < B; ++b) {
      xv[b] = X_BROADCAST ? subgroupBroadcast(x_unit[b], step)
                          : load_x4(pc.x_offset + b * pc.x_stride + c);
    }
    [[unroll]] for (uint r = 0u; r < R; ++r) {
      const vec4 q = duet_unit_raw(blocks[r], step);
      [[unroll]] for (uint b = 0u; b < B; ++b) {
        part[r][b] = step == 0u ? dot(q, xv[b]) : part[r][b] + dot(q, xv[b]);
      }
    }
  }
  [[unroll]] for (uint r = 0u; r < R; ++r) {
    [[unroll]] for (uint b = 0u; b < B; ++b) acc[r][b] += blocks[r].d * part[r][b];
  }
}
#endif

void main() {
  const uint lane = gl_SubgroupInvocationID;
  const uint k_lane = lane % K_LANES;
  // Row i of this lane group: consecutive lane groups take consecutive rows.
  const uint row0 = duet_group_index() * ROWS_PER_WG + gl_LocalInvocationIndex / K_LANES;
  const uint num_units = (pc.in_dim + DUET_UNIT - 1u) / DUET_UNIT;
  const bool has_tail = (pc.in_dim % DUET_UNIT) != 0u;

  // Lanes past the last row compute on the last row and store nothing (they still take part
  // in the subgroup operations). SwiGLU: rows OUT_R.. are the up rows of rows 0..OUT_R-1.
  [[unroll]] for (uint r = 0u; r < R; ++r) {
    if (r < OUT_R) {
      row_c[r] = min(row0 + r * (WG / K_LANES), pc.rows - 1u);
    } else {
      row_c[r] = row_c[r - OUT_R] + pc.rows;
    }
  }

  [[unroll]] for (uint r = 0u; r < R; ++r) {
    [[unroll]] for (uint b = 0u; b < B; ++b) acc[r][b] = 0.0;
  }

#if defined(W_Q8_0) || defined(W_Q4_0)
  if (QUANT_RUNS) {
    // Runs of 8 blocks. With one or two vectors whole runs are unrolled, so every block's byte
    // offset in its units is a constant (the shifts that line its words up cost nothing); with
    // more, the sums dominate the shifts and unrolling R x B sums 8 times multiplies LLVM's
    // compile time (seconds per pipeline on lavapipe), so their runs loop, as does a last
    // partial run.
    uint g = 0u;
    if (B <= 2u) {
      for (; g + 8u <= num_units; g += 8u) {
        start_run(g);
        [[unroll]] for (uint k = 0u; k < 8u; ++k) {
          next_block_of_run(k);
          add_block(g + k);
        }
      }
    }
    for (; g < num_units; g += 8u) {
      start_run(g);
      for (uint k = 0u; k < 8u && g + k < num_units; ++k) {
        next_block_of_run(k);
        add_block(g + k);
      }
    }
  }
#endif
  for (uint u0 = 0u; u0 < num_units && !QUANT_RUNS; u0 += K_LANES) {
    const uint u = min(u0 + k_lane, num_units - 1u);
    const bool in_range = u0 + k_lane < num_units;
    const bool tail = has_tail && u == num_units - 1u;

    // X_BROADCAST: lane i loads vec4 i % 8 of the unit for every vector; step k takes lane k's.
    vec4 x_lane[B];
    if (X_BROADCAST) {
      const uint c = u * DUET_UNIT + (lane % 8u) * 4u;
      [[unroll]] for (uint b = 0u; b < B; ++b) {
        x_lane[b] = vec4(0.0);
        if (c < pc.in_dim) x_lane[b] = load_x4(pc.x_offset + b * pc.x_stride + c);
        if (tail) {
          x_lane[b] = mix(vec4(0.0), x_lane[b],
                          lessThan(uvec4(c) + uvec4(0u, 1u, 2u, 3u), uvec4(pc.in_dim)));
        }
      }
    }
#if defined(W_F16)
    uvec4 f16_raw[R];  // 8 halves: steps 2k and 2k + 1
#endif
#if defined(W_Q8_0) || defined(W_Q4_0)
    DuetUnit wu[R];
    [[unroll]] for (uint r = 0u; r < R; ++r) {
      wu[r] = duet_load_unit_at(row_c[r] * pc.row_bytes + u * DUET_BLOCK_BYTES);
    }
#endif
    [[unroll]] for (uint step = 0u; step < 8u; ++step) {
      const uint c = u * DUET_UNIT + step * 4u;
      // Columns past in_dim (tail unit only) hold neighbouring or padding bytes: select 0.
      const bvec4 valid = lessThan(uvec4(c) + uvec4(0u, 1u, 2u, 3u), uvec4(pc.in_dim));
      vec4 xv[B];
      [[unroll]] for (uint b = 0u; b < B; ++b) {
        if (X_BROADCAST) {
          xv[b] = subgroupBroadcast(x_lane[b], step);
        } else {
          // Steps wholly past in_dim read nothing (the last vector may end the view).
          xv[b] = vec4(0.0);
          if (!tail || c < pc.in_dim) xv[b] = load_x4(pc.x_offset + b * pc.x_stride + c);
          if (tail) xv[b] = mix(vec4(0.0), xv[b], valid);
          if (!in_range) xv[b] = vec4(0.0);
        }
      }
      [[unroll]] for (uint r = 0u; r < R; ++r) {
#if defined(W_Q8_0) || defined(W_Q4_0)
        const vec4 wv = duet_unit_step(wu[r], step);
#else
        // Steps wholly past in_dim (tail unit) read nothing: the row may end the view.
        const bool load = !tail || c < pc.in_dim;
#if defined(W_F32)
        vec4 wv = vec4(0.0);
        if (load) wv = uintBitsToFloat(duet_w16_at(row_c[r] * pc.row_bytes + c * 4u, W_ALIGNED));
#else
        if ((step & 1u) == 0u) {
          f16_raw[r] = uvec4(0u);
          if (load) f16_raw[r] = duet_w16_at(row_c[r] * pc.row_bytes + c * 2u, W_ALIGNED);
        }
        const uvec2 h = (step & 1u) == 0u ? f16_raw[r].xy : f16_raw[r].zw;
        vec4 wv = vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y));
#endif
        if (tail) wv = mix(vec4(0.0), wv, valid);
#endif
        [[unroll]] for (uint b = 0u; b < B; ++b) acc[r][b] += dot(wv, xv[b]);
      }
    }
  }

  [[unroll]] for (uint r = 0u; r < R; ++r) {
    [[unroll]] for (uint b = 0u; b < B; ++b) {
      // A loop with a constant trip count (K_LANES <= 32): a halving loop has none that the
      // compiler derives, stays a loop, and makes every acc access around it indirect (on
      // lavapipe: a per-lane scatter to scratch memory for each of the R x B sums, every step).
      [[unroll]] for (uint i = 1u; i <= 5u; ++i) {
        const uint m = K_LANES >> i;
        if (m > 0u) acc[r][b] += subgroupShuffleXor(acc[r][b], m);
      }
    }
  }
  [[unroll]] for (uint r = 0u; r < OUT_R; ++r) {
    const uint row = row0 + r * (WG / K_LANES);
    if (k_lane != 0u || row >= pc.rows) continue;
    [[unroll]] for (uint b = 0u; b < B; ++b) {
      float v = acc[r][b];
      if (GATED) v = (v / (1.0 + exp(-v))) * acc[r + OUT_R][b];
      store_y(row, b, v);
    }
  }
}
