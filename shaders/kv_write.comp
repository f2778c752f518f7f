#version 450
// Commit: stores pending K and V rows of a batch of sequences into the paged cache.
// For sequence s (see kv_cache.glsl for the sequence table) with c = num_cached and
// e = c + num_new (num_new = positions to commit, e.g. the accepted ones), positions
// [first, e) are written, where first = c for KV_F32/KV_F16 (straight into their blocks) and
// first = max(c, floor(e / block_size) * block_size) for KV_FP8 (into the sequence's f16 tail:
// only the trailing partial block; kv_seal.comp already sealed the completed ones).
//   k_new, v_new: f32 [rows, num_kv_heads, head_dim] (pending row i of s: q_offset + i).
//   k_dst, v_dst: the layer's K and V cache data (KV_F32, KV_F16), or the whole tail (KV_FP8,
//   both bound to the tail buffer).
//   Launch: (ceil(max_positions * num_kv_heads * head_dim / 4 / WG), num_seqs, 1), where
//   max_positions >= e - first for every sequence.
#include "kv_cache.glsl"

layout(constant_id = 0) const uint WG = 64;
layout(local_size_x_id = 0) in;

layout(std430, set = 0, binding = 0) readonly buffer KNew { vec4 k_new[]; };
layout(std430, set = 0, binding = 1) readonly buffer VNew { vec4 v_new[]; };
#if defined(KV_F32)
layout(std430, set = 0, binding = 2) writeonly buffer KDst { vec4 k_dst[]; };
layout(std430, set = 0, binding = 3) writeonly buffer VDst { vec4 v_dst[]; };
#elif defined(KV_F16) || defined(KV_FP8)
layout(std430, set = 0, binding = 2) writeonly buffer KDst { uvec2 k_dst[]; };
layout(std430, set = 0, binding = 3) writeonly buffer VDst { uvec2 v_dst[]; };
#else
#error "define one of KV_F32, KV_F16, KV_FP8"
#endif
layout(std430, set = 0, binding = 4) readonly buffer Seqs { uint seqs[]; };

layout(push_constant) uniform Push {
  uint num_kv_heads;
  uint head_dim;
  uint block_size;
  uint layer;       // KV_FP8: tail addressing
  uint num_layers;  // KV_FP8: tail addressing
} pc;

void main() {
  const uint s = gl_WorkGroupID.y;
  const uint base = s * DUET_SEQ_WORDS;
  const uint q_offset = seqs[base + DUET_SEQ_Q_OFFSET];
  const uint cached = seqs[base + DUET_SEQ_NUM_CACHED];
  const uint end = cached + seqs[base + DUET_SEQ_NUM_NEW];
#if defined(KV_FP8)
  const uint first = max(cached, end / pc.block_size * pc.block_size);
#else
  const uint first = cached;
#endif
  const uint d4s = pc.head_dim / 4u;
  const uint idx = gl_WorkGroupID.x * WG + gl_LocalInvocationID.x;
  const uint d4 = idx % d4s;
  const uint head = (idx / d4s) % pc.num_kv_heads;
  const uint pos = first + idx / (d4s * pc.num_kv_heads);
  if (pos >= end) return;
  const uint src = ((q_offset + pos - cached) * pc.num_kv_heads + head) * d4s + d4;
  const uint slot = pos % pc.block_size;
#if defined(KV_FP8)
  const uint tail_slot = seqs[base + DUET_SEQ_TAIL_SLOT];
  // Units of 4 halves: ((((tail_slot * L + layer) * 2 + part) * H + head) * bs + slot) * d4s.
  const uint k_at = ((((tail_slot * pc.num_layers + pc.layer) * 2u) * pc.num_kv_heads + head) *
                         pc.block_size + slot) * d4s + d4;
  const uint v_at = k_at + pc.num_kv_heads * pc.block_size * d4s;
  k_dst[k_at] = duet_pack_f16x4(k_new[src]);
  v_dst[v_at] = duet_pack_f16x4(v_new[src]);
#else
  const int block = int(seqs[seqs[base + DUET_SEQ_TABLE_OFFSET] + pos / pc.block_size]);
  const uint at = ((uint(block) * pc.num_kv_heads + head) * pc.block_size + slot) * d4s + d4;
#if defined(KV_F32)
  k_dst[at] = k_new[src];
  v_dst[at] = v_new[src];
#else
  k_dst[at] = duet_pack_f16x4(k_new[src]);
  v_dst[at] = duet_pack_f16x4(v_new[src]);
#endif
#endif
}
