#version 450
// RMSNorm of rows: out[r] = x[r] * (1 / sqrt(mean(x[r]^2) + eps)) * w (cpu_ref::RmsNorm).
// One workgroup per row; each invocation sums a strided slice of squares in f32, subgroupAdd
// combines a subgroup's, and (only with several subgroups) one shared-memory pass combines the
// subgroups' sums. out may alias x.
//   x, out: f32 [rows, n]; w: f32 [n].   Launch: Groups1D(rows).
// The host picks the workgroup size: one subgroup on CPU drivers such as lavapipe, where a
// barrier switches between the workgroup's subgroups in software; 256 on GPUs.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

// Workgroup size: specialization constant 0, default 256 (a multiple of the subgroup size).
layout(local_size_x_id = 0, local_size_x = 256) in;
#define WG gl_WorkGroupSize.x

layout(std430, set = 0, binding = 0) buffer X { float x[]; };
layout(std430, set = 0, binding = 1) buffer W { float w[]; };
layout(std430, set = 0, binding = 2) buffer Out { float out_[]; };

layout(push_constant) uniform Push {
  uint rows;
  uint n;
  float eps;
} pc;

shared float partial[WG];  // one per subgroup (at most WG of them)

void main() {
  const uint row = duet_group_index();
  if (row >= pc.rows) return;  // uniform per workgroup
  const uint tid = gl_LocalInvocationID.x;
  const uint base = row * pc.n;
  float sum = 0.0;
  for (uint i = tid; i < pc.n; i += WG) {
    const float v = x[base + i];
    sum += v * v;
  }
  sum = subgroupAdd(sum);
  if (gl_NumSubgroups > 1u) {  // uniform: the same for every invocation
    if (subgroupElect()) partial[gl_SubgroupID] = sum;
    barrier();
    sum = 0.0;
    for (uint s = 0u; s < gl_NumSubgroups; ++s) sum += partial[s];
  }
  const float mean = sum / float(pc.n);
  const float scale = 1.0 / sqrt(mean + pc.eps);
  for (uint i = tid; i < pc.n; i += WG) {
    out_[base + i] = (x[base + i] * scale) * w[i];
  }
}
