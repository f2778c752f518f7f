#version 450
// Greedy sampling on the device: ids[row] = the index of the largest logit of the row, lowest
// index on ties; NaN is never chosen; 0 when every logit is NaN (as duet::Greedy on the CPU).
// One workgroup per row: a strided scan per invocation, then a subgroup shuffle reduction and
// one shared-memory step across subgroups.
//   logits: f32 [rows, vocab];  ids: int32 [rows].   Launch: Groups1D(rows).
#extension GL_KHR_shader_subgroup_shuffle : require
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(std430, set = 0, binding = 0) readonly buffer Logits { float logits[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Ids { int ids[]; };

layout(push_constant) uniform Push {
  uint rows;
  uint vocab;
} pc;

const uint kNoId = 0xffffffffu;
const uint kMaxSubgroups = 64u;

shared float sg_value[kMaxSubgroups];
shared uint sg_id[kMaxSubgroups];

// (value, id) beats (best_value, best_id): larger value, or equal value and lower id.
bool duet_better(float value, uint id, float best_value, uint best_id) {
  return value > best_value || (value == best_value && id < best_id);
}

void main() {
  const uint row = duet_group_index();
  if (row >= pc.rows) return;  // uniform per workgroup
  const uint tid = gl_LocalInvocationID.x;
  const uint base = row * pc.vocab;
  float best = uintBitsToFloat(0xff800000u);  // -inf
  uint best_id = kNoId;
  for (uint i = tid; i < pc.vocab; i += WG) {
    const float v = logits[base + i];
    if (!isnan(v) && duet_better(v, i, best, best_id)) {
      best = v;
      best_id = i;
    }
  }
  for (uint o = gl_SubgroupSize / 2u; o > 0u; o /= 2u) {
    const float other = subgroupShuffleXor(best, o);
    const uint other_id = subgroupShuffleXor(best_id, o);
    if (duet_better(other, other_id, best, best_id)) {
      best = other;
      best_id = other_id;
    }
  }
  if (subgroupElect()) {
    sg_value[gl_SubgroupID] = best;
    sg_id[gl_SubgroupID] = best_id;
  }
  barrier();
  if (tid == 0u) {
    for (uint s = 1u; s < gl_NumSubgroups; ++s) {
      if (duet_better(sg_value[s], sg_id[s], best, best_id)) {
        best = sg_value[s];
        best_id = sg_id[s];
      }
    }
    ids[row] = best_id == kNoId ? 0 : int(best_id);
  }
}
