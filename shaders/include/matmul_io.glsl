// Reading the f32 activations of the matrix kernels (matvec.comp, matmul.comp).
//
// The including shader defines, before this file:
//   - `vec4 x4_at(uint i)`, the i-th vec4 of the bound x view, and `uint x4_count()`;
//   - `X_ALIGNED`, a bool specialization constant: every vector starts at a multiple of 4
//     elements (x_stride and x_offset multiples of 4), so one vec4 load serves 4 elements.
#ifndef DUET_MATMUL_IO_GLSL_
#define DUET_MATMUL_IO_GLSL_

// x[e .. e+3] for a flat element index e. Misaligned (X_ALIGNED false): two loads and a shift,
// both clamped to the view (the host pads x to 16 bytes, so a needed element is always inside).
vec4 load_x4(uint e) {
  if (X_ALIGNED) return x4_at(e >> 2u);
  const uint idx = min(e >> 2u, x4_count() - 1u);
  const uint s = e & 3u;
  const vec4 a = x4_at(idx);
  const vec4 b = x4_at(min(idx + 1u, x4_count() - 1u));
  return s == 0u ? a : (s == 1u ? vec4(a.yzw, b.x) : (s == 2u ? vec4(a.zw, b.xy) : vec4(a.w, b.xyz)));
}

#endif  // DUET_MATMUL_IO_GLSL_
