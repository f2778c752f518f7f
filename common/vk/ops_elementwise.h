// Host-side launches of the elementwise kernels (shaders/rms_norm.comp, add.comp, swiglu.comp,
// get_rows.comp, rope.comp), shared by the engine and the tests. Each Record* call checks its
// arguments, looks the pipeline up in `kernels` and records one or more dispatches into `cl`
// (nothing runs until cl.Submit()). Tensors are row-major; shapes below are in elements.
// Operations larger than the device's maxStorageBufferRange are split into several dispatches
// over row-aligned views (every view passed in must start at a multiple of
// min_storage_buffer_offset_alignment). Errors: INVALID_ARGUMENT for a bad shape or a view too
// small for it, plus the errors of Kernels::Get and CommandList::Dispatch.
#ifndef DUET_COMMON_VK_OPS_ELEMENTWISE_H_
#define DUET_COMMON_VK_OPS_ELEMENTWISE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/model/ggml_types.h"
#include "common/model/model_config.h"
#include "common/vk/buffer.h"
#include "common/vk/command_list.h"
#include "common/vk/pipeline.h"

namespace duet::vk {

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, per row, as cpu_ref::RmsNorm (the sum of squares
// accumulated in f32 across one workgroup per row).
// x, out: f32 [rows, n]; w: f32 [n]. out may be x (in place).
absl::Status RecordRmsNorm(CommandList& cl, const Kernels& kernels, BufferView x, BufferView w,
                           BufferView out, int64_t rows, int64_t n, float eps);

// out = a + b elementwise. a, b, out: f32 [n]; out may be a or b (residual add in place).
absl::Status RecordAdd(CommandList& cl, const Kernels& kernels, BufferView a, BufferView b,
                       BufferView out, int64_t n);

// out = silu(gate) * up elementwise (cpu_ref::Silu). gate, up, out: f32 [n]; out may alias
// gate or up.
absl::Status RecordSwiGlu(CommandList& cl, const Kernels& kernels, BufferView gate, BufferView up,
                          BufferView out, int64_t n);

// out[t] = decode(table[ids[t]]) (DequantizeRow semantics). table: `type` [num_rows, n]
// (F32, F16, Q8_0 or Q4_0; n % block size == 0); ids: int32 [num_tokens]; out: f32
// [num_tokens, n]. Ids outside [0, num_rows) produce rows of zeros. The table view must extend
// to a multiple of 4 bytes (a whole Buffer's view always does). The table may exceed
// maxStorageBufferRange: it is bound chunk by chunk (one dispatch per chunk). `row_stride`:
// bytes between rows (0 = packed; else >= GgmlRowBytes and a multiple of 4 for F32, of 2
// otherwise, e.g. a matrix weight's AlignedRowStride).
absl::Status RecordGetRows(CommandList& cl, const Kernels& kernels, GgmlType type, BufferView table,
                           int64_t num_rows, int64_t n, BufferView ids, BufferView out,
                           int64_t num_tokens, int64_t row_stride = 0);

// Per-pair rotation rates for RecordRope, computed in double on the host: for pair i <
// rope_dim / 2, turns_i = rope_theta^(-2i / rope_dim) / (freq_factors[i] * scale) / (2 pi),
// where scale = rope_scaling_factor for kLinear (else 1), stored as the fraction of turns_i in
// 0.64 fixed point: words {2i, 2i+1} = {high 32 bits, low 32 bits}. The kernel multiplies it by
// the integer position exactly (umulExtended), so angles keep double precision at any position.
// freq_factors: empty or [rope_dim / 2] (crashes otherwise, as cpu_ref::ApplyRope).
std::vector<uint32_t> MakeRopeTable(const ModelConfig& config,
                                    absl::Span<const float> freq_factors);

struct RopeShape {
  int64_t num_tokens = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  int64_t rope_dim = 0;    // even, <= head_dim; dims >= rope_dim pass through
  int64_t row_stride = 0;  // elements between tokens; 0 = num_heads * head_dim
  RopeLayout layout = RopeLayout::kNormal;
  // Heads of a second tensor rotated in the same dispatch (a step's k beside its q); 0: none.
  int64_t num_heads2 = 0;
};

// Rotates x in place as cpu_ref::ApplyRope does for each token t at positions[t], and x2 too
// when shape.num_heads2 > 0.
// x: f32 [num_tokens, row_stride] whose first num_heads * head_dim elements per row are
// [num_heads, head_dim]; x2: f32 [num_tokens, num_heads2, head_dim] (dense; ignored when
// num_heads2 is 0); positions: int32 [num_tokens] (>= 0); table: MakeRopeTable's words,
// uint32 [rope_dim].
absl::Status RecordRope(CommandList& cl, const Kernels& kernels, BufferView x, BufferView positions,
                        BufferView table, const RopeShape& shape, BufferView x2 = {});

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_OPS_ELEMENTWISE_H_
