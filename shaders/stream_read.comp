#version 450
// Streaming-read bandwidth probe: each workgroup sums a grid-strided share of a vec4 buffer and
// writes one partial sum. Used by tests/vk to measure read bandwidth; sums are checked loosely.
//   in: f32 [num_vec4 * 4]; out: f32 [num_groups].   Launch: Groups{num_groups}.
#include "common.glsl"

// Workgroup size: specialization constant 0, default 256 (a power of two).
layout(local_size_x_id = 0, local_size_x = 256) in;
#define WG gl_WorkGroupSize.x

#if defined(IN_TEXEL)
// The same bytes through a uniform texel buffer (RGBA32F view): the read path of the matrix
// kernels' W_TEXEL variants.
layout(set = 0, binding = 0) uniform samplerBuffer in_tex;
vec4 load_in(uint i) { return texelFetch(in_tex, int(i)); }
#else
layout(std430, set = 0, binding = 0) readonly buffer In { vec4 in_[]; };
vec4 load_in(uint i) { return in_[i]; }
#endif
layout(std430, set = 0, binding = 1) buffer Out { float out_[]; };

layout(push_constant) uniform Push {
  uint num_vec4;
} pc;

shared float partial[WG];

void main() {
  const uint stride = gl_NumWorkGroups.x * WG;
  vec4 acc = vec4(0.0);
  for (uint i = gl_WorkGroupID.x * WG + gl_LocalInvocationID.x; i < pc.num_vec4; i += stride) {
    acc += load_in(i);
  }
  const uint tid = gl_LocalInvocationID.x;
  partial[tid] = acc.x + acc.y + acc.z + acc.w;
  barrier();
  [[unroll]] for (uint s = WG / 2; s > 0; s /= 2) {
    if (tid < s) partial[tid] += partial[tid + s];
    barrier();
  }
  if (tid == 0) out_[gl_WorkGroupID.x] = partial[0];
}
