#version 450
// Causal attention for the pending positions of a batch of sequences (chunked prefill): query i
// of sequence s sits at position num_cached + i and attends to keys 0..its position, through
// the block table (committed keys) and the pending rows (this chunk's keys). FlashAttention-2:
// see include/flash_attn_core.glsl for the tiling, the key values and the spec constants.
//   q:    f32 [rows, num_heads, head_dim] (post-RoPE);  k_new, v_new: f32 [rows, kv_heads, head_dim]
//   k_cache, v_cache (+ k_scales, v_scales, tail for KV_FP8): the layer's cache (kv_cache.glsl)
//   seqs: the sequence table;  out: f32 [rows, num_heads, head_dim]
//   Launch: (max query tiles per sequence, num_kv_heads, num_seqs); a sequence has
//   floor((end - 1) / Q_POS) - floor(num_cached / Q_POS) + 1 tiles.
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

layout(push_constant) uniform Push {
  uint num_heads;
  uint num_kv_heads;
  uint layer;
  uint num_layers;
  float scale;  // 1 / sqrt(head_dim)
} pc;

#include "flash_attn_core.glsl"

layout(std430, set = 0, binding = 9) writeonly buffer Out { vec4 out_[]; };

void main() {
  const AttnTile t = duet_load_tile(gl_WorkGroupID.z, gl_WorkGroupID.y, gl_WorkGroupID.x);
  if (t.tile_pos >= t.end) return;  // uniform per workgroup
  duet_begin_row(t);
  duet_attend(t, 0u, min(t.end, t.tile_pos + Q_POS));
  [[unroll]] for (uint s = 0u; s < RPL; ++s) {
    if (row_pos[s] < 0) continue;
    const uint out_row = t.q_offset + uint(row_pos[s]) - t.cached;
    const uint base = (out_row * pc.num_heads + row_head[s]) * D4 + row_lane;
    const float inv_l = 1.0 / row_l[s];
    [[unroll]] for (uint i = 0u; i < DL; ++i) out_[base + i * LANES] = row_acc[s][i] * inv_l;
  }
}
