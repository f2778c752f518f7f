#version 450
// Combines paged_attn_decode.comp's partitions: for query row i of sequence s (position
// p = num_cached + i) and head h, partitions 0..floor(p / part_size) hold (m_k, l_k, acc_k);
//   M = max m_k,  L = sum l_k exp(m_k - M),  out = sum acc_k exp(m_k - M) / L.
//   partial_acc, partial_ml: as written by paged_attn_decode.comp; seqs: the sequence table;
//   out: f32 [rows, num_heads, head_dim].
//   Launch: (max num_new over the sequences, num_heads, num_seqs).
#include "kv_cache.glsl"

layout(constant_id = 0) const uint WG = 32;
layout(local_size_x_id = 0) in;

layout(std430, set = 0, binding = 0) readonly buffer PartialAcc { vec4 partial_acc[]; };
layout(std430, set = 0, binding = 1) readonly buffer PartialMl { vec2 partial_ml[]; };
layout(std430, set = 0, binding = 2) readonly buffer Seqs { uint seqs[]; };
layout(std430, set = 0, binding = 3) writeonly buffer Out { vec4 out_[]; };

layout(push_constant) uniform Push {
  uint num_heads;
  uint head_dim;
  uint part_size;
  uint max_parts;
} pc;

void main() {
  const uint base = gl_WorkGroupID.z * DUET_SEQ_WORDS;
  const uint i = gl_WorkGroupID.x;
  if (i >= seqs[base + DUET_SEQ_NUM_NEW]) return;
  const uint pos = seqs[base + DUET_SEQ_NUM_CACHED] + i;
  if (pos < pc.part_size) return;  // one partition: paged_attn_decode.comp wrote the row
  const uint row = seqs[base + DUET_SEQ_Q_OFFSET] + i;
  const uint head = gl_WorkGroupID.y;
  const uint num_parts = pos / pc.part_size + 1u;
  const uint first = (row * pc.num_heads + head) * pc.max_parts;
  float m = partial_ml[first].x;
  for (uint k = 1u; k < num_parts; ++k) m = max(m, partial_ml[first + k].x);
  float l = 0.0;
  for (uint k = 0u; k < num_parts; ++k) {
    const vec2 ml = partial_ml[first + k];
    l += ml.y * exp(ml.x - m);
  }
  const uint d4s = pc.head_dim / 4u;
  for (uint d4 = gl_LocalInvocationID.x; d4 < d4s; d4 += WG) {
    vec4 sum = vec4(0.0);
    for (uint k = 0u; k < num_parts; ++k) {
      sum += partial_acc[(first + k) * d4s + d4] * exp(partial_ml[first + k].x - m);
    }
    out_[(row * pc.num_heads + head) * d4s + d4] = sum / l;
  }
}
