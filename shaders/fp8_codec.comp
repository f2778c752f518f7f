#version 450
// Exercises shaders/include/fp8.glsl for tests/vk: codes[i] = encode(values[i]) and
// decoded[i] = decode(i & 255), so the test can compare both directions with common/model/fp8.h.
//   values: f32 [n]; codes: uint32 [n]; decoded: f32 [n].   Launch: Groups1D(ceil(n / 64)).
#include "common.glsl"
#include "fp8.glsl"

layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) buffer Values { float values[]; };
layout(std430, set = 0, binding = 1) buffer Codes { uint codes[]; };
layout(std430, set = 0, binding = 2) buffer Decoded { float decoded[]; };

layout(push_constant) uniform Push {
  uint n;
} pc;

void main() {
  const uint i = duet_group_index() * 64u + gl_LocalInvocationID.x;
  if (i >= pc.n) return;
  codes[i] = duet_f32_to_fp8_e4m3(values[i]);
  decoded[i] = duet_fp8_e4m3_to_f32(i & 255u);
}
