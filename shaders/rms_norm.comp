#version 450
// RMSNorm of rows: out[r] = x[r] * (1 / sqrt(mean(x[r]^2) + eps)) * w (cpu_ref::RmsNorm).
// One workgroup per row; each invocation sums a strided slice of squares in f32, then a
// shared-memory tree reduction gives the row's sum. out may alias x.
//   x, out: f32 [rows, n]; w: f32 [n].   Launch: Groups1D(rows).
#include "common.glsl"

// Workgroup size: specialization constant 0, default 256 (a power of two).
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

shared float partial[WG];

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
  partial[tid] = sum;
  barrier();
  [[unroll]] for (uint stride = WG / 2; stride > 0; stride /= 2) {
    if (tid < stride) partial[tid] += partial[tid + stride];
    barrier();
  }
  const float mean = partial[0] / float(pc.n);
  const float scale = 1.0 / sqrt(mean + pc.eps);
  for (uint i = tid; i < pc.n; i += WG) {
    out_[base + i] = (x[base + i] * scale) * w[i];
  }
}
