#version 450
// Split-K ("flash-decoding") attention for a batch of sequences with few pending positions each
// (1 for a decode step, k + 1 for speculative verification: query i attends causally up to its
// own position num_cached + i). The keys 0..end-1 are cut into partitions of part_size positions
// (aligned to absolute positions, so a sequence's result does not depend on its batch); each
// workgroup folds one partition for one query tile and one KV head (include/flash_attn_core.glsl)
// and writes unnormalized partial results, which paged_attn_reduce.comp combines. A row whose
// keys fit one partition (position < part_size) is finished here: the workgroup writes its
// output with the reduce's arithmetic for one partition, and the reduce skips it (the host
// skips the reduce when every row is such), saving a dispatch per layer for short contexts.
//   q, k_new, v_new, k_cache, v_cache, k_scales, v_scales, tail, seqs: as flash_attn_prefill.comp
//   partial_acc: f32 [rows, num_heads, max_parts, head_dim]  (sum of p * v, relative to m)
//   partial_ml:  f32 [rows, num_heads, max_parts, 2]         (m = max score, l = sum of p)
//   out:         f32 [rows, num_heads, head_dim]              (rows with position < part_size)
//   Launch: (max_parts, num_kv_heads * max query tiles per sequence, num_seqs).
//   REQUIRES: part_size % BC == 0; max_parts >= ceil(end / part_size) for every sequence.
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

layout(push_constant) uniform Push {
  uint num_heads;
  uint num_kv_heads;
  uint layer;
  uint num_layers;
  float scale;  // 1 / sqrt(head_dim)
  uint part_size;
  uint max_parts;
} pc;

#if defined(ATTN_TEXEL)
// Query tiles start at the sequence's first pending position, not at a multiple of Q_POS: the
// k + 1 rows of a verify fill one tile instead of straddling two (each texel-path row folds its
// keys on its own, so where a tile starts changes no row's arithmetic).
#define ATTN_TILES_AT_CACHED
#endif
#include "flash_attn_core.glsl"

layout(std430, set = 0, binding = 9) writeonly buffer PartialAcc { vec4 partial_acc[]; };
layout(std430, set = 0, binding = 10) writeonly buffer PartialMl { vec2 partial_ml[]; };
layout(std430, set = 0, binding = 11) writeonly buffer Out { vec4 out_[]; };

void main() {
  const uint kv_head = gl_WorkGroupID.y % pc.num_kv_heads;
  const AttnTile t = duet_load_tile(gl_WorkGroupID.z, kv_head, gl_WorkGroupID.y / pc.num_kv_heads);
  if (t.tile_pos >= t.end) return;  // uniform per workgroup
  const uint keys_end = min(t.end, t.tile_pos + Q_POS);
  const uint part = gl_WorkGroupID.x;
  const uint part_begin = part * pc.part_size;
  if (part_begin >= keys_end) return;
  duet_begin_row(t);
  duet_attend(t, part_begin, min(part_begin + pc.part_size, keys_end));
  [[unroll]] for (uint s = 0u; s < RPL; ++s) {
    if (row_pos[s] < 0) continue;
    const uint out_row = t.q_offset + uint(row_pos[s]) - t.cached;
    if (uint(row_pos[s]) < pc.part_size) {
      // paged_attn_reduce.comp's sums for a single partition, term for term (m = row_m).
      const float e = exp(row_m[s] - row_m[s]);
      const float l = 0.0 + row_l[s] * e;
      const uint o = (out_row * pc.num_heads + row_head[s]) * D4 + row_lane;
      [[unroll]] for (uint i = 0u; i < DL; ++i) {
        out_[o + i * LANES] = (vec4(0.0) + row_acc[s][i] * e) / l;
      }
      continue;
    }
    const uint at = (out_row * pc.num_heads + row_head[s]) * pc.max_parts + part;
    [[unroll]] for (uint i = 0u; i < DL; ++i) {
      partial_acc[at * D4 + row_lane + i * LANES] = row_acc[s][i];
    }
    if (row_lane == 0u) partial_ml[at] = vec2(row_m[s], row_l[s]);
  }
}
