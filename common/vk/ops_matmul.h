// Host-side launches of the matrix kernels: shaders/matvec.comp (decode: a few activation
// vectors) and shaders/matmul.comp (prefill: many tokens), for GGUF weights stored as F32, F16,
// Q8_0 or Q4_0 and dequantized on the fly.
//
//   y[t, r] = sum_c w[r, c] * x[t, c]      t < n_tokens, r < w.rows, c < w.cols
//
// Weights keep their GGUF layout: `rows` rows (ggml ne[1], output features) of `cols` elements
// (ggml ne[0], input features), each row GgmlRowBytes(type, cols) bytes, rows back to back.
// Weights larger than maxStorageBufferRange are bound chunk by chunk (one dispatch per chunk of
// whole rows, writing its rows of y at an offset).
#ifndef DUET_COMMON_VK_OPS_MATMUL_H_
#define DUET_COMMON_VK_OPS_MATMUL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/model/ggml_types.h"
#include "common/vk/buffer.h"
#include "common/vk/command_list.h"
#include "common/vk/pipeline.h"

namespace duet::vk {

class Device;

// The kernels read weights and activations in aligned 16-byte units, so buffers carry padding.
inline constexpr uint64_t kMatMulAlignment = 16;

// Bytes a weight of `rows` x `cols` elements of `type` needs in its buffer: the encoded rows,
// `row_stride` bytes apart (0 = packed, GgmlRowBytes), rounded up to a multiple of
// kMatMulAlignment (the kernels may read the padding, never use it).
// REQUIRES: cols % block size == 0.
uint64_t MatMulWeightBytes(GgmlType type, int64_t rows, int64_t cols, int64_t row_stride = 0);

// The row stride that starts every row of a Q8_0 / Q4_0 weight at a multiple of 16 bytes:
// GgmlRowBytes rounded up. The CPU-device matvec reads such rows with one 16-byte fetch fewer
// per block (MatMulConfig::aligned_quant_rows).
int64_t AlignedRowStride(GgmlType type, int64_t cols);

// Bytes an f32 activation [n, stride] (last row `cols` long) needs, rounded up likewise.
uint64_t MatMulActivationBytes(int64_t n, int64_t stride, int64_t cols);

// A weight matrix in device memory.
struct WeightView {
  GgmlType type = GgmlType::kF32;  // kF32, kF16, kQ8_0 or kQ4_0
  int64_t rows = 0;                // output features
  int64_t cols = 0;                // input features; a multiple of 32 for Q8_0 and Q4_0
  // The encoded rows. REQUIRES: data.offset is a multiple of kMatMulAlignment and of the
  // device's minStorageBufferOffsetAlignment, data.size >= MatMulWeightBytes(type, rows, cols,
  // row_stride) and a multiple of 16.
  BufferView data;
  // Bytes from one row to the next: 0 = packed (GgmlRowBytes); else >= that, and a multiple of
  // 16 (rows padded, AlignedRowStride).
  int64_t row_stride = 0;
};

// What the kernel does with each row's sum s[t, r] = sum_c w[r, c] * x[t, c].
enum class MatMulEpilogue {
  kStore,       // y[t, r] = s[t, r]
  kAccumulate,  // y[t, r] += s[t, r] (a residual add: y is read, then written)
  // Matvec only (n_tokens <= matvec_max_tokens): w holds 2 * n rows, the gate projection's n
  // rows then the up projection's n; y[t, r] = silu(s[t, r]) * s[t, n + r] for r < n, exactly
  // what RecordSwiGlu computes from the two products (a fused FFN input).
  kSwiGlu,
};

// Strides of x and y in elements (0: dense) and the epilogue. A y_stride larger than the output
// rows with y_column > 0 writes into a column slice of a wider output (e.g. one head group of a
// fused projection). The output rows are w.rows, or w.rows / 2 for kSwiGlu.
struct MatMulLayout {
  int64_t x_stride = 0;  // elements between tokens of x; 0 = w.cols
  int64_t y_stride = 0;  // elements between tokens of y; 0 = the output rows
  int64_t y_column = 0;  // y[t * y_stride + y_column + r]
  MatMulEpilogue epilogue = MatMulEpilogue::kStore;
};

// One output of RecordMatVecSplit: `rows` consecutive rows of the weight, stored dense into y
// [n_tokens, rows].
struct MatMulOutput {
  BufferView y;
  int64_t rows = 0;
};

// Launch shapes, chosen per device class and overridable (tests, tuning). The defaults are
// DefaultMatMulConfig(device); docs/performance.md records how they were tuned.
struct MatMulConfig {
  // Decode kernel (matvec.comp).
  int64_t matvec_max_tokens = 8;   // n_tokens <= this uses matvec (larger: matmul)
  uint32_t matvec_workgroup = 64;  // invocations; a multiple of the subgroup size
  uint32_t matvec_k_lanes = 1;     // lanes sharing one row: power of two <= subgroup size
  // Rows each lane walks at once; capped at 32 / vectors per dispatch (compile time).
  uint32_t matvec_rows_per_lane = 2;
  // With matvec_k_lanes == 1 (and subgroups of >= 8 lanes): each x vec4 is loaded by one lane
  // and shared with subgroupBroadcast, for devices where buffer loads cost far more than
  // subgroup operations (lavapipe).
  bool matvec_x_broadcast = false;
  // Prefill kernel (matmul.comp): a tile_rows x tile_tokens tile per workgroup, a thread_rows x
  // thread_tokens sub-tile per invocation; workgroup = (tile_rows / thread_rows) *
  // (tile_tokens / thread_tokens).
  uint32_t tile_rows = 32;
  uint32_t tile_tokens = 32;
  uint32_t thread_rows = 4;
  uint32_t thread_tokens = 4;
  bool shared_tiles = true;  // stage tiles in shared memory (GPUs) or read directly (CPUs)
  // Read weights and activations through uniform texel buffers (the *_texel variants) instead
  // of storage buffers: the same bytes, in 16-byte texels. On lavapipe a texel fetch is far
  // cheaper than a storage-buffer load (docs/performance.md); x_broadcast is off with it.
  bool texel_reads = false;
  // Weight layout, for whoever uploads the weights (the Vulkan engine): Q8_0 / Q4_0 rows padded
  // to start at multiples of 16 bytes (WeightView::row_stride = AlignedRowStride), which the
  // one-row-per-lane matvec reads in runs of 8 blocks with a third fewer fetches (CPU devices).
  bool aligned_quant_rows = false;
  // > 0: bind weight chunks of at most this many bytes (tests of the chunked path), on top of
  // the device's maxStorageBufferRange.
  uint64_t max_chunk_bytes = 0;
};

// Launch shapes for `device`: CPU devices (lavapipe) walk one row per lane and read operands
// directly; GPUs split rows across lanes and tile through shared memory.
MatMulConfig DefaultMatMulConfig(const Device& device);

// INVALID_ARGUMENT when `config` is inconsistent (sizes not powers of two where required,
// workgroup over the device limit, shared tiles over maxComputeSharedMemorySize).
absl::Status ValidateMatMulConfig(const Device& device, const MatMulConfig& config);

// Records y = x * w^T for n_tokens tokens into `cl`:
//   x: f32 [n_tokens, x_stride]; view size >= MatMulActivationBytes(n_tokens, x_stride, w.cols)
//   y: f32 [n_tokens, y_stride]; view covers element (n_tokens - 1) * y_stride + y_column +
//      the output rows. x and y start at multiples of minStorageBufferOffsetAlignment and must
//      not overlap.
// Uses matvec for n_tokens <= config.matvec_max_tokens (in groups of at most 8 vectors), matmul
// otherwise. Sums are f32. `config` null: DefaultMatMulConfig(device).
// Errors: INVALID_ARGUMENT for an unsupported type, a bad shape, stride or alignment, a view
// too small, or kSwiGlu with an odd w.rows, with n_tokens > matvec_max_tokens or with w larger
// than one binding; plus the errors of Kernels::Get and CommandList::Dispatch.
absl::Status RecordMatMul(CommandList& cl, const Kernels& kernels, const WeightView& w,
                          BufferView x, BufferView y, int64_t n_tokens,
                          const MatMulLayout& layout = {}, const MatMulConfig* config = nullptr);

// A fused projection for decode-shaped calls: w's rows are outputs[0].rows rows, then
// outputs[1].rows, then outputs[2].rows (e.g. the q, k and v projections uploaded back to back),
// and each output gets its own rows, in one dispatch per group of at most 8 tokens. The results
// are bit-identical to one RecordMatMul per part. REQUIRES what RecordMatMul requires, with x
// dense; 1 to 3 outputs whose rows sum to w.rows; n_tokens <= config.matvec_max_tokens; w within
// one binding (maxStorageBufferRange, config.max_chunk_bytes). Errors: INVALID_ARGUMENT
// otherwise, plus those of RecordMatMul.
absl::Status RecordMatVecSplit(CommandList& cl, const Kernels& kernels, const WeightView& w,
                               BufferView x, absl::Span<const MatMulOutput> outputs,
                               int64_t n_tokens, const MatMulConfig* config = nullptr);

// The multiple that weight, x and y views of RecordMatMul must start at.
uint64_t MatMulViewAlignment(const Device& device, const MatMulConfig& config);

// The most weight bytes (whole rows) RecordMatMul binds at once: larger weights are split into
// chunks of rows, which RecordMatVecSplit and the SwiGLU epilogue cannot take.
uint64_t MaxMatMulBindingBytes(const Device& device, const MatMulConfig& config);

// Which kernel RecordMatMul uses for n_tokens ("matvec" or "matmul"), for reports.
std::string MatMulKernelName(const MatMulConfig& config, int64_t n_tokens);

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_OPS_MATMUL_H_
