#version 450
// Embedding gather: out[t] = decode(table[ids[t]]) for the table rows this dispatch binds.
// The host binds the table chunk by chunk (rows [first_row, first_row + chunk_rows)); tokens
// whose id falls in another chunk are left alone. The dispatch with zero_invalid != 0 writes
// zeros for ids outside [0, num_rows).
//   table: one of SRC_F32 | SRC_F16 | SRC_Q8_0 | SRC_Q4_0, [chunk_rows, n], row_bytes per row;
//   ids: int32 [num_tokens]; out: f32 [num_tokens, n].
//   Launch: Groups1D(num_tokens); each workgroup loops over its row's elements.
#include "common.glsl"
#include "types.glsl"

// Workgroup size: specialization constant 0, default 256 (a power of two).
layout(local_size_x_id = 0, local_size_x = 256) in;
#define WG gl_WorkGroupSize.x

layout(std430, set = 0, binding = 0) buffer Table { uint words[]; };
layout(std430, set = 0, binding = 1) buffer Ids { int ids[]; };
layout(std430, set = 0, binding = 2) buffer Out { float out_[]; };

layout(push_constant) uniform Push {
  uint num_tokens;
  uint n;          // elements per row
  uint row_bytes;  // bytes per encoded row
  uint first_row;  // first table row in the bound chunk
  uint chunk_rows; // rows in the bound chunk
  uint num_rows;   // rows in the whole table
  uint zero_invalid;
} pc;

float decode(uint row_offset, uint i) {
#if defined(SRC_F32)
  return uintBitsToFloat(words[(row_offset >> 2u) + i]);
#elif defined(SRC_F16)
  return DUET_LOAD_F16(words, row_offset + 2u * i);
#elif defined(SRC_Q8_0)
  return DUET_Q8_0_VALUE(words, row_offset + (i / DUET_QK) * DUET_Q8_0_BLOCK_BYTES, i % DUET_QK);
#elif defined(SRC_Q4_0)
  return DUET_Q4_0_VALUE(words, row_offset + (i / DUET_QK) * DUET_Q4_0_BLOCK_BYTES, i % DUET_QK);
#else
#error "define one of SRC_F32, SRC_F16, SRC_Q8_0, SRC_Q4_0"
#endif
}

void main() {
  const uint t = duet_group_index();
  if (t >= pc.num_tokens) return;
  const int id = ids[t];
  const uint out_base = t * pc.n;
  if (id < 0 || uint(id) >= pc.num_rows) {
    if (pc.zero_invalid != 0u) {
      for (uint i = gl_LocalInvocationID.x; i < pc.n; i += WG) out_[out_base + i] = 0.0;
    }
    return;
  }
  const uint row = uint(id);
  if (row < pc.first_row || row - pc.first_row >= pc.chunk_rows) return;
  const uint row_offset = (row - pc.first_row) * pc.row_bytes;
  for (uint i = gl_LocalInvocationID.x; i < pc.n; i += WG) {
    out_[out_base + i] = decode(row_offset, i);
  }
}
