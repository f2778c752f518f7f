#version 450
// out = a + b elementwise (residual add). out may alias a or b.
//   a, b, out: f32 [n].   Launch: Groups1D(ceil(n / WG)).
#include "common.glsl"

// Workgroup size: specialization constant 0, default 256 (a power of two).
layout(local_size_x_id = 0, local_size_x = 256) in;
#define WG gl_WorkGroupSize.x

layout(std430, set = 0, binding = 0) buffer A { float a[]; };
layout(std430, set = 0, binding = 1) buffer B { float b[]; };
layout(std430, set = 0, binding = 2) buffer Out { float out_[]; };

layout(push_constant) uniform Push {
  uint n;
} pc;

void main() {
  const uint i = duet_group_index() * WG + gl_LocalInvocationID.x;
  if (i >= pc.n) return;
  out_[i] = a[i] + b[i];
}
