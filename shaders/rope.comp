#version 450
// Rotary position embedding in place (cpu_ref::ApplyRope), of one tensor or of two at the same
// positions (a step's q and k). One invocation per (token t, pair i < rope_dim / 2), looping over
// the heads of both tensors (so each angle's sin and cos are computed once); ROPE_NEOX=0 pairs
// (2i, 2i + 1), ROPE_NEOX=1 pairs (i, i + rope_dim / 2). Dimensions >= rope_dim are not touched.
//
// Angles: table[2i], table[2i + 1] hold the pair's rotation rate as a fraction of a turn per
// position in 0.64 fixed point (MakeRopeTable, computed in double on the host, with linear
// scaling and freq factors folded in). position * rate mod 1 is computed exactly in integers,
// so the angle keeps full precision at any position; only the final conversion to radians in
// [-pi, pi) and sin/cos are f32.
//   x: f32 [num_tokens, row_stride] holding [num_heads, head_dim] per token;
//   x2: f32 [num_tokens, row_stride2] holding [num_heads2, head_dim] (num_heads2 0: unused);
//   positions: int32 [num_tokens]; table: uint32 [rope_dim].
#include "common.glsl"

layout(local_size_x_id = 0, local_size_x = 256) in;
#define WG gl_WorkGroupSize.x

layout(std430, set = 0, binding = 0) buffer X { float x[]; };
layout(std430, set = 0, binding = 1) buffer Positions { int positions[]; };
layout(std430, set = 0, binding = 2) buffer Table { uint table[]; };
layout(std430, set = 0, binding = 3) buffer X2 { float x2[]; };

layout(push_constant) uniform Push {
  uint num_tokens;
  uint num_heads;
  uint head_dim;
  uint half_rope;    // rope_dim / 2
  uint row_stride;   // elements between tokens of x
  uint num_heads2;   // heads of x2
  uint row_stride2;  // elements between tokens of x2
} pc;

void main() {
  const uint idx = duet_group_index() * WG + gl_LocalInvocationID.x;
  if (idx >= pc.num_tokens * pc.half_rope) return;
  const uint t = idx / pc.half_rope;
  const uint i = idx - t * pc.half_rope;

  // phase = frac(position * rate) in 0.64 fixed point: (hi, lo) words.
  const uint p = uint(positions[t]);
  uint carry, lo;
  umulExtended(p, table[2u * i + 1u], carry, lo);
  const uint hi = p * table[2u * i] + carry;
  // As a signed turn fraction in [-1/2, 1/2), times 2 pi.
  const float angle = float(int(hi)) * 1.4629180792671596e-9 + float(lo) * 3.4061215800865545e-19;
  const float c = cos(angle);
  const float s = sin(angle);

#if ROPE_NEOX
  const uint a = i;
  const uint b = i + pc.half_rope;
#else
  const uint a = 2u * i;
  const uint b = 2u * i + 1u;
#endif
  for (uint h = 0u; h < pc.num_heads; ++h) {
    const uint base = t * pc.row_stride + h * pc.head_dim;
    const float x0 = x[base + a];
    const float x1 = x[base + b];
    x[base + a] = x0 * c - x1 * s;
    x[base + b] = x0 * s + x1 * c;
  }
  for (uint h = 0u; h < pc.num_heads2; ++h) {
    const uint base = t * pc.row_stride2 + h * pc.head_dim;
    const float x0 = x2[base + a];
    const float x1 = x2[base + b];
    x2[base + a] = x0 * c - x1 * s;
    x2[base + b] = x0 * s + x1 * c;
  }
}
