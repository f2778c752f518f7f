#version 450
// Seal: quantizes the blocks that this step's pending positions complete into their FP8 pool
// blocks, one (block, KV head, K|V) tile of block_size x head_dim per workgroup.
// For sequence s with c = num_cached and e = c + num_new, block b is sealed when
// floor(c / block_size) <= b and (b + 1) * block_size <= e. Its values are the committed ones
// from the f16 tail (positions < c) and the pending rows rounded to f16 (positions >= c), so the
// result depends only on the block's tokens. scale = amax / 448 (1 when amax == 0), stored at
// [block_table[b]][head]; code = E4M3(x * (1 / scale)) with the quotients correctly rounded
// (fp8.glsl, kv_cache.glsl: bit-identical to common/model/fp8.h).
//   k_new, v_new: f32 [rows, num_kv_heads, head_dim]; tail: the whole f16 tail (uvec2 units);
//   k_data, v_data: the layer's FP8 data (uint = 4 codes); k_scales, v_scales: the layer's f32
//   scales [num_blocks][num_kv_heads].
//   Launch: (max blocks to seal per sequence, num_kv_heads, num_seqs * 2); z = s * 2 + part.
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "fp8.glsl"
#include "kv_cache.glsl"

layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint HEAD_DIM = 64;
layout(constant_id = 2) const uint BLOCK_SIZE = 16;
// The workgroup is one subgroup (CPU drivers: one SIMD register): the tile's amax needs no
// shared memory or barrier, and each lane reads its values twice instead of staging them
// (llvmpipe runs a workgroup with a barrier as one coroutine per subgroup and reaches shared
// memory lane by lane).
layout(constant_id = 3) const bool ONE_SUBGROUP = false;
layout(local_size_x_id = 0) in;

layout(std430, set = 0, binding = 0) readonly buffer KNew { vec4 k_new[]; };
layout(std430, set = 0, binding = 1) readonly buffer VNew { vec4 v_new[]; };
layout(std430, set = 0, binding = 2) readonly buffer Tail { uvec2 tail[]; };
layout(std430, set = 0, binding = 3) writeonly buffer KData { uint k_data[]; };
layout(std430, set = 0, binding = 4) writeonly buffer VData { uint v_data[]; };
layout(std430, set = 0, binding = 5) writeonly buffer KScales { float k_scales[]; };
layout(std430, set = 0, binding = 6) writeonly buffer VScales { float v_scales[]; };
layout(std430, set = 0, binding = 7) readonly buffer Seqs { uint seqs[]; };

layout(push_constant) uniform Push {
  uint num_kv_heads;
  uint layer;
  uint num_layers;
} pc;

const uint D4 = HEAD_DIM / 4u;
const uint TILE4 = BLOCK_SIZE * D4;  // vec4s in one tile
const uint MAX_SUBGROUPS = 64u;      // WG <= 64 * subgroup size

shared vec4 tile[TILE4];
shared float subgroup_max[MAX_SUBGROUPS];

// Element vec4 e of block b's tile: committed (the f16 tail) or pending (rounded to f16).
vec4 value_at(uint b, uint e, uint cached, uint q_offset, uint head, uint part, uint tail_tile) {
  const uint pos = b * BLOCK_SIZE + e / D4;
  if (pos < cached) return duet_unpack_f16x4(tail[tail_tile + e]);
  const uint src = ((q_offset + pos - cached) * pc.num_kv_heads + head) * D4 + e % D4;
  return duet_round_f16x4(part == 0u ? k_new[src] : v_new[src]);
}

void main() {
  const uint s = gl_WorkGroupID.z >> 1u;
  const uint part = gl_WorkGroupID.z & 1u;
  const uint head = gl_WorkGroupID.y;
  const uint base = s * DUET_SEQ_WORDS;
  const uint q_offset = seqs[base + DUET_SEQ_Q_OFFSET];
  const uint cached = seqs[base + DUET_SEQ_NUM_CACHED];
  const uint end = cached + seqs[base + DUET_SEQ_NUM_NEW];
  const uint b = cached / BLOCK_SIZE + gl_WorkGroupID.x;
  if ((b + 1u) * BLOCK_SIZE > end) return;  // uniform per workgroup
  const uint tail_slot = seqs[base + DUET_SEQ_TAIL_SLOT];
  const uint tail_tile = (((tail_slot * pc.num_layers + pc.layer) * 2u + part) * pc.num_kv_heads +
                          head) * TILE4;
  const uint tid = gl_LocalInvocationID.x;

  float amax = 0.0;
  for (uint e = tid; e < TILE4; e += WG) {
    const vec4 v = value_at(b, e, cached, q_offset, head, part, tail_tile);
    if (!ONE_SUBGROUP) tile[e] = v;
    const vec4 a = abs(v);
    amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
  }
  amax = subgroupMax(amax);
  if (!ONE_SUBGROUP) {
    if (subgroupElect()) subgroup_max[gl_SubgroupID] = amax;
    barrier();
    amax = 0.0;
    for (uint i = 0u; i < gl_NumSubgroups; ++i) amax = max(amax, subgroup_max[i]);
  }
  const float scale = duet_fp8_scale(amax);
  const float inv_scale = duet_div_rn(1.0, scale);

  const uint block = seqs[seqs[base + DUET_SEQ_TABLE_OFFSET] + b];
  const uint out_tile = (block * pc.num_kv_heads + head) * TILE4;  // in words of 4 codes
  for (uint e = tid; e < TILE4; e += WG) {
    const vec4 q =
        (ONE_SUBGROUP ? value_at(b, e, cached, q_offset, head, part, tail_tile) : tile[e]) *
        inv_scale;
    const uint word = duet_f32_to_fp8_e4m3(q.x) | (duet_f32_to_fp8_e4m3(q.y) << 8u) |
                      (duet_f32_to_fp8_e4m3(q.z) << 16u) | (duet_f32_to_fp8_e4m3(q.w) << 24u);
    if (part == 0u) {
      k_data[out_tile + e] = word;
    } else {
      v_data[out_tile + e] = word;
    }
  }
  if (tid == 0u) {
    if (part == 0u) {
      k_scales[block * pc.num_kv_heads + head] = scale;
    } else {
      v_scales[block * pc.num_kv_heads + head] = scale;
    }
  }
}
