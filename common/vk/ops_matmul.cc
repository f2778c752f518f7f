#include "common/vk/ops_matmul.h"

#include <algorithm>
#include <iterator>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/base/status.h"
#include "common/vk/device.h"

namespace duet::vk {
namespace {

// Push-constant blocks; each mirrors the `Push` block of its shader.
struct MatVecPush {
  uint32_t in_dim;
  uint32_t rows;
  uint32_t row_bytes;
  uint32_t x_stride;
  uint32_t x_offset;
  uint32_t y_stride;
  uint32_t y_offset;
  uint32_t split1;
  uint32_t y1_stride;
  uint32_t y1_offset;
  uint32_t split2;
  uint32_t y2_stride;
  uint32_t y2_offset;
};
DUET_VK_PUSH_CONSTANTS(MatVecPush);

struct MatMulPush {
  uint32_t in_dim;
  uint32_t rows;
  uint32_t row_bytes;
  uint32_t x_stride;
  uint32_t x_offset;
  uint32_t y_stride;
  uint32_t y_offset;
  uint32_t n_tokens;
};
DUET_VK_PUSH_CONSTANTS(MatMulPush);

// matvec.comp keeps NUM_VECS sums per row in registers; larger batches take several dispatches.
constexpr int64_t kMaxVecsPerDispatch = 8;
// Element indices and byte offsets in the shaders are 32-bit.
constexpr uint64_t kMaxIndexBytes = uint64_t{1} << 31;

uint64_t U64(int64_t v) { return static_cast<uint64_t>(v); }
uint32_t U32(int64_t v) { return static_cast<uint32_t>(v); }
uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// The matvec (decode) or matmul (prefill) variant for a weight type, reading w and x through
// storage buffers or (texel) uniform texel buffers.
absl::StatusOr<KernelId> MatrixKernel(GgmlType type, bool matvec, bool texel) {
  switch (type) {
    case GgmlType::kF32:
      if (texel) return matvec ? KernelId::kMatvecF32Texel : KernelId::kMatmulF32Texel;
      return matvec ? KernelId::kMatvecF32 : KernelId::kMatmulF32;
    case GgmlType::kF16:
      if (texel) return matvec ? KernelId::kMatvecF16Texel : KernelId::kMatmulF16Texel;
      return matvec ? KernelId::kMatvecF16 : KernelId::kMatmulF16;
    case GgmlType::kQ8_0:
      if (texel) return matvec ? KernelId::kMatvecQ8_0Texel : KernelId::kMatmulQ8_0Texel;
      return matvec ? KernelId::kMatvecQ8_0 : KernelId::kMatmulQ8_0;
    case GgmlType::kQ4_0:
      if (texel) return matvec ? KernelId::kMatvecQ4_0Texel : KernelId::kMatmulQ4_0Texel;
      return matvec ? KernelId::kMatvecQ4_0 : KernelId::kMatmulQ4_0;
    default:
      return absl::InvalidArgumentError(absl::StrCat("RecordMatMul: no kernel for weight type ",
                                                     std::string(GgmlTypeName(type))));
  }
}

// The bindable window of an f32 tensor for elements [first, end): a view that starts aligned
// (at or before `first`) and ends at a 16-byte multiple, and the element offset of `first`
// inside it.
struct Window {
  BufferView view;
  uint32_t offset = 0;  // elements
};

Window MakeWindow(BufferView whole, uint64_t first, uint64_t end, uint64_t align) {
  const uint64_t lo = first * 4 / align * align;
  const uint64_t hi = std::min(RoundUp(end * 4, kMatMulAlignment), whole.size);
  return Window{whole.Sub(lo, hi - lo), static_cast<uint32_t>(first - lo / 4)};
}

// Tokens per dispatch such that every window of x and y fits in `range` bytes (with room for
// the alignment slack at both ends). 0 when not even one token fits.
int64_t TokensPerDispatch(uint64_t range, uint64_t align, int64_t x_stride, int64_t cols,
                          int64_t y_stride, int64_t y_cols) {
  const uint64_t usable = range > align + kMatMulAlignment ? range - align - kMatMulAlignment : 0;
  const auto fit = [&](int64_t stride, int64_t last) -> int64_t {
    const uint64_t last_bytes = U64(last) * 4;
    if (last_bytes > usable) return 0;
    return static_cast<int64_t>((usable - last_bytes) / (U64(stride) * 4)) + 1;
  };
  return std::min(fit(x_stride, cols), fit(y_stride, y_cols));
}

// The matmul tile for `count` tokens: when they fill less than one configured tile, the token
// side shrinks to the thread tile multiple that covers them (no invocations computing padding)
// and the row side grows, up to the configured invocation count (and shared memory), so the
// workgroup stays as wide.
struct Tile {
  uint32_t rows = 0;
  uint32_t tokens = 0;
};

Tile FitTile(const MatMulConfig& c, int64_t count, uint32_t max_shared_bytes) {
  Tile tile{c.tile_rows, c.tile_tokens};
  if (count >= c.tile_tokens) return tile;
  tile.tokens =
      static_cast<uint32_t>((U64(count) + c.thread_tokens - 1) / c.thread_tokens) * c.thread_tokens;
  const uint64_t invocations = U64(c.tile_rows / c.thread_rows) * (c.tile_tokens / c.thread_tokens);
  const auto fits = [&](uint32_t rows) {
    const uint64_t wg = U64(rows / c.thread_rows) * (tile.tokens / c.thread_tokens);
    const uint64_t shared = (U64(rows) + tile.tokens) * 9 * 16;
    return wg <= invocations && (!c.shared_tiles || shared <= max_shared_bytes);
  };
  while (fits(tile.rows * 2)) tile.rows *= 2;
  return tile;
}

}  // namespace

uint64_t MatMulWeightBytes(GgmlType type, int64_t rows, int64_t cols, int64_t row_stride) {
  const int64_t stride = row_stride > 0 ? row_stride : GgmlRowBytes(type, cols);
  return RoundUp(U64(rows) * U64(stride), kMatMulAlignment);
}

int64_t AlignedRowStride(GgmlType type, int64_t cols) {
  return static_cast<int64_t>(RoundUp(U64(GgmlRowBytes(type, cols)), kMatMulAlignment));
}

uint64_t MatMulActivationBytes(int64_t n, int64_t stride, int64_t cols) {
  return RoundUp((U64(n - 1) * U64(stride) + U64(cols)) * 4, kMatMulAlignment);
}

MatMulConfig DefaultMatMulConfig(const Device& device) {
  MatMulConfig config;
  const DeviceLimits& limits = device.limits();
  if (device.info().type == DeviceType::kCpu) {
    // lavapipe: one SIMD register is one subgroup; a lane per row with four rows in flight, a
    // one-subgroup workgroup (so a small matrix still makes enough workgroups for every
    // thread, and the last one computes few clamped rows), 16 x 4 register tiles, and every
    // operand read through texel buffers, which llvmpipe fetches far faster than storage
    // buffers (docs/performance.md).
    config.texel_reads = true;
    config.aligned_quant_rows = true;
    config.matvec_workgroup = std::max<uint32_t>(8, limits.subgroup_size);
    config.matvec_k_lanes = 1;
    config.matvec_rows_per_lane = 4;
    config.matvec_x_broadcast = false;
    config.tile_rows = 64;
    config.tile_tokens = 32;
    config.thread_rows = 16;
    config.thread_tokens = 4;
    config.shared_tiles = false;
  } else {
    // GPUs: 16 lanes per row (or the whole subgroup when smaller) read neighbouring blocks;
    // 64 x 64 tiles through shared memory, 4 x 4 per invocation (256 invocations).
    const uint32_t subgroup = std::max<uint32_t>(limits.subgroup_size, 1);
    config.matvec_k_lanes = std::min<uint32_t>(16, subgroup);
    config.matvec_workgroup = std::max<uint32_t>(128, subgroup);
    config.matvec_rows_per_lane = 1;
    config.tile_rows = 64;
    config.tile_tokens = 64;
    config.thread_rows = 4;
    config.thread_tokens = 4;
    config.shared_tiles = true;
  }
  return config;
}

absl::Status ValidateMatMulConfig(const Device& device, const MatMulConfig& c) {
  const DeviceLimits& limits = device.limits();
  const auto bad = [](auto... parts) {
    return absl::InvalidArgumentError(absl::StrCat("MatMulConfig: ", parts...));
  };
  if (c.matvec_max_tokens < 0) return bad("matvec_max_tokens < 0");
  if (c.matvec_workgroup == 0 || c.matvec_workgroup > limits.max_workgroup_invocations) {
    return bad("matvec_workgroup ", c.matvec_workgroup, " outside [1, ",
               limits.max_workgroup_invocations, "]");
  }
  if (limits.subgroup_size > 0 && c.matvec_workgroup % limits.subgroup_size != 0) {
    return bad("matvec_workgroup ", c.matvec_workgroup, " is not a multiple of the subgroup size ",
               limits.subgroup_size);
  }
  if (!IsPowerOfTwo(c.matvec_k_lanes) || c.matvec_k_lanes > c.matvec_workgroup ||
      (limits.subgroup_size > 0 && c.matvec_k_lanes > limits.subgroup_size)) {
    return bad("matvec_k_lanes ", c.matvec_k_lanes,
               " must be a power of two <= the subgroup size and the workgroup");
  }
  if (c.matvec_rows_per_lane == 0 || c.matvec_rows_per_lane > 16) {
    return bad("matvec_rows_per_lane ", c.matvec_rows_per_lane, " outside [1, 16]");
  }
  if (c.thread_rows == 0 || c.thread_tokens == 0 || c.tile_rows % c.thread_rows != 0 ||
      c.tile_tokens % c.thread_tokens != 0) {
    return bad("tile ", c.tile_rows, "x", c.tile_tokens, " is not a multiple of the thread tile ",
               c.thread_rows, "x", c.thread_tokens);
  }
  const uint64_t wg = U64(c.tile_rows / c.thread_rows) * (c.tile_tokens / c.thread_tokens);
  if (wg > limits.max_workgroup_invocations || wg > limits.max_workgroup_size[0]) {
    return bad("matmul workgroup ", wg, " exceeds the device limit");
  }
  if (c.shared_tiles &&
      (U64(c.tile_rows) + c.tile_tokens) * 9 * 16 > limits.max_shared_memory_bytes) {
    return bad("tiles ", c.tile_rows, "x", c.tile_tokens, " need more than ",
               limits.max_shared_memory_bytes, " bytes of shared memory");
  }
  return absl::OkStatus();
}

uint64_t MatMulViewAlignment(const Device& device, const MatMulConfig& config) {
  const DeviceLimits& limits = device.limits();
  uint64_t align = std::max(kMatMulAlignment, limits.min_storage_buffer_offset_alignment);
  if (config.texel_reads) align = std::max(align, limits.min_texel_buffer_offset_alignment);
  return align;
}

uint64_t MaxMatMulBindingBytes(const Device& device, const MatMulConfig& config) {
  const uint64_t range =
      std::min<uint64_t>(device.limits().max_storage_buffer_range, kMaxIndexBytes);
  const uint64_t w_range =
      config.max_chunk_bytes > 0 ? std::min(range, config.max_chunk_bytes) : range;
  return w_range > kMatMulAlignment ? w_range - kMatMulAlignment : 0;
}

std::string MatMulKernelName(const MatMulConfig& config, int64_t n_tokens) {
  return n_tokens <= config.matvec_max_tokens ? "matvec" : "matmul";
}

namespace {

// Where rows of the product go: `rows` consecutive output rows (after the previous region's)
// are stored at y[t * stride + column + r], r counted from the region's first row.
struct OutputRegion {
  BufferView y;
  int64_t stride = 0;
  int64_t column = 0;
  int64_t rows = 0;
};

// RecordMatMul and RecordMatVecSplit: the product of w and x into 1 to 3 regions (several only
// for the matvec, with the weight in one binding).
absl::Status RecordMatrix(CommandList& cl, const Kernels& kernels, const WeightView& w,
                          BufferView x, int64_t x_stride_in, absl::Span<const OutputRegion> outs,
                          int64_t n_tokens, MatMulEpilogue epilogue,
                          const MatMulConfig* config_in) {
  constexpr const char* kOp = "RecordMatMul";
  const Device& device = kernels.device();
  const MatMulConfig config = config_in != nullptr ? *config_in : DefaultMatMulConfig(device);
  DUET_RETURN_IF_ERROR(ValidateMatMulConfig(device, config));
  const bool use_matvec = n_tokens <= config.matvec_max_tokens;
  DUET_ASSIGN_OR_RETURN(const KernelId id, MatrixKernel(w.type, use_matvec, config.texel_reads));
  const bool swiglu = epilogue == MatMulEpilogue::kSwiGlu;
  // Several regions or a SwiGLU pair rows that only the matvec's lanes hold together.
  const bool fused = swiglu || outs.size() > 1;

  // Shapes and layout.
  if (w.rows <= 0 || w.cols <= 0 || n_tokens <= 0 || w.rows > INT32_MAX || w.cols > INT32_MAX ||
      n_tokens > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": rows ", w.rows, ", cols ", w.cols,
                                                   ", n_tokens ", n_tokens,
                                                   " must be in [1, 2^31)"));
  }
  const int64_t block = TraitsOf(w.type).block_size;
  if (w.cols % block != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": cols ", w.cols, " of a ",
                                                   std::string(GgmlTypeName(w.type)),
                                                   " weight is not a multiple of ", block));
  }
  if (fused && !use_matvec) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": a SwiGLU epilogue or a split output needs the matvec (n_tokens ",
                     n_tokens, " > matvec_max_tokens ", config.matvec_max_tokens, ")"));
  }
  if (swiglu && w.rows % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": a SwiGLU weight holds gate and up rows, but has ", w.rows, " rows"));
  }
  const int64_t out_rows = swiglu ? w.rows / 2 : w.rows;
  int64_t region_rows = 0;
  for (const OutputRegion& out : outs) region_rows += out.rows;
  if (region_rows != out_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": the outputs take ", region_rows, " rows of a product of ", out_rows));
  }
  const int64_t x_stride = x_stride_in == 0 ? w.cols : x_stride_in;
  if (x_stride < w.cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": x_stride ", x_stride, " < cols ", w.cols));
  }
  for (const OutputRegion& out : outs) {
    if (out.rows <= 0 || out.column < 0 || out.stride < out.column + out.rows) {
      return absl::InvalidArgumentError(absl::StrCat(kOp, ": y_stride ", out.stride, " < y_column ",
                                                     out.column, " + rows ", out.rows,
                                                     " (or no rows)"));
    }
  }

  // Views.
  const DeviceLimits& limits = device.limits();
  const uint64_t align = MatMulViewAlignment(device, config);
  const int64_t packed_row_bytes = GgmlRowBytes(w.type, w.cols);
  if (w.row_stride != 0 &&
      (w.row_stride < packed_row_bytes || w.row_stride % kMatMulAlignment != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": row_stride ", w.row_stride,
                                                   " must be 0 (packed) or a multiple of 16 >= ",
                                                   packed_row_bytes));
  }
  const int64_t row_bytes = w.row_stride > 0 ? w.row_stride : packed_row_bytes;
  bool aligned = w.data.offset % align == 0 && x.offset % align == 0;
  for (const OutputRegion& out : outs) aligned &= out.y.offset % align == 0;
  if (!aligned) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": weight, x and y views must start at multiples of ", align));
  }
  if (w.data.size < MatMulWeightBytes(w.type, w.rows, w.cols, w.row_stride) ||
      w.data.size % kMatMulAlignment != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": weight view holds ", w.data.size, " bytes, needs ",
                     MatMulWeightBytes(w.type, w.rows, w.cols, w.row_stride),
                     " (rows padded to 16 bytes; the view a multiple of 16)"));
  }
  if (x.size < MatMulActivationBytes(n_tokens, x_stride, w.cols)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": x holds ", x.size, " bytes, needs ",
                     MatMulActivationBytes(n_tokens, x_stride, w.cols)));
  }
  for (const OutputRegion& out : outs) {
    const uint64_t needed = (U64(n_tokens - 1) * U64(out.stride) + U64(out.column + out.rows)) * 4;
    if (out.y.size < needed) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": y holds ", out.y.size, " bytes, needs ", needed));
    }
  }

  // Weight chunks: whole rows, starting aligned, each padded to 16 bytes inside the view.
  const uint64_t range = std::min<uint64_t>(limits.max_storage_buffer_range, kMaxIndexBytes);
  const uint64_t max_chunk = MaxMatMulBindingBytes(device, config);
  if (max_chunk == 0) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": bindable range too small"));
  }
  DUET_ASSIGN_OR_RETURN(
      std::vector<RowChunk> chunks,
      SplitRows(w.data.Sub(0, U64(w.rows) * U64(row_bytes)), w.rows, row_bytes, max_chunk, align));
  if (fused && chunks.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": a SwiGLU or split weight must fit one binding of ", max_chunk,
                     " bytes; it takes ", chunks.size()));
  }
  for (RowChunk& chunk : chunks) {
    const uint64_t rel = chunk.view.offset - w.data.offset;
    chunk.view =
        w.data.Sub(rel, std::min(RoundUp(chunk.view.size, kMatMulAlignment), w.data.size - rel));
  }

  // Token groups: at most kMaxVecsPerDispatch for matvec, else as many as x and y windows allow.
  int64_t per_dispatch = use_matvec ? kMaxVecsPerDispatch : INT32_MAX;
  for (const OutputRegion& out : outs) {
    per_dispatch = std::min(per_dispatch, TokensPerDispatch(range, align, x_stride, w.cols,
                                                            out.stride, out.column + out.rows));
  }
  if (per_dispatch <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": one token of x or y exceeds the bindable range ", range));
  }

  // Specializations that drop the misaligned-load paths: x vectors starting at multiples of 4
  // elements (window offsets keep that), plain-float rows starting at multiples of 16 bytes.
  const uint32_t x_aligned = x_stride % 4 == 0 ? 1 : 0;
  const uint32_t w_aligned = row_bytes % 16 == 0 ? 1 : 0;
  // One x load per subgroup, handed out by subgroupBroadcast (matvec.comp, X_BROADCAST).
  const uint32_t x_broadcast = config.matvec_x_broadcast && config.matvec_k_lanes == 1 &&
                                       limits.subgroup_size >= 8 && !config.texel_reads
                                   ? 1
                                   : 0;
  const uint32_t accumulate = epilogue == MatMulEpilogue::kAccumulate ? 1 : 0;
  // Quantized matmul variants never read W_ALIGNED (the last constant), so their SPIR-V lacks
  // it; the quantized matvec reads it (runs of blocks in 16-byte-aligned rows).
  const size_t drop = TraitsOf(w.type).block_size > 1 ? 1 : 0;
  const uint32_t max_x = limits.max_workgroup_count[0];
  for (int64_t t0 = 0; t0 < n_tokens; t0 += per_dispatch) {
    const int64_t count = std::min(per_dispatch, n_tokens - t0);
    const Window xw = MakeWindow(x, U64(t0) * U64(x_stride),
                                 U64(t0 + count - 1) * U64(x_stride) + U64(w.cols), align);
    // The regions' windows; bindings 3 and 4 repeat the last region when there are fewer.
    Window yw[3];
    for (size_t i = 0; i < 3; ++i) {
      const OutputRegion& out = outs[std::min(i, outs.size() - 1)];
      const uint64_t first = U64(t0) * U64(out.stride) + U64(out.column);
      yw[i] =
          MakeWindow(out.y, first, first + U64(count - 1) * U64(out.stride) + U64(out.rows), align);
    }
    const Pipeline* pipeline = nullptr;
    Tile tile;
    // At most 32 accumulators (rows x vectors) per lane: LLVM's compile time on CPU drivers
    // grows steeply with the unrolled sum count (8 x 8 took ~25 s on lavapipe), and the row
    // order inside a lane never changes a row's sum, so results stay batch-invariant. SwiGLU
    // needs an even count (gate rows and their up rows).
    uint32_t rows_per_lane =
        std::max<uint32_t>(1, std::min<uint32_t>(config.matvec_rows_per_lane, 32 / U32(count)));
    if (swiglu) rows_per_lane = std::max<uint32_t>(2, rows_per_lane & ~1u);
    if (use_matvec) {
      const uint32_t spec[] = {config.matvec_workgroup,
                               config.matvec_k_lanes,
                               U32(count),
                               rows_per_lane,
                               x_aligned,
                               x_broadcast,
                               w_aligned,
                               static_cast<uint32_t>(epilogue)};
      DUET_ASSIGN_OR_RETURN(pipeline, kernels.Get<MatVecPush>(id, spec));
    } else {
      tile = FitTile(config, count, limits.max_shared_memory_bytes);
      const uint32_t wg = (tile.rows / config.thread_rows) * (tile.tokens / config.thread_tokens);
      const uint32_t spec[] = {wg,
                               tile.rows,
                               tile.tokens,
                               config.thread_rows,
                               config.thread_tokens,
                               config.shared_tiles ? 1u : 0u,
                               x_aligned,
                               accumulate,
                               w_aligned};
      DUET_ASSIGN_OR_RETURN(
          pipeline, kernels.Get<MatMulPush>(id, absl::MakeConstSpan(spec, std::size(spec) - drop)));
    }
    for (const RowChunk& chunk : chunks) {
      const uint32_t y_offset = yw[0].offset + U32(chunk.first_row);
      if (use_matvec) {
        // Region boundaries in output rows (UINT32_MAX: no such region).
        const uint32_t split1 = outs.size() > 1 ? U32(outs[0].rows) : UINT32_MAX;
        const uint32_t split2 = outs.size() > 2 ? U32(outs[0].rows + outs[1].rows) : UINT32_MAX;
        const int64_t rows = swiglu ? out_rows : chunk.num_rows;
        const MatVecPush push{
            U32(w.cols),   U32(rows), U32(row_bytes),
            U32(x_stride), xw.offset, U32(outs[0].stride),
            y_offset,      split1,    U32(outs[std::min<size_t>(1, outs.size() - 1)].stride),
            yw[1].offset,  split2,    U32(outs.back().stride),
            yw[2].offset};
        const uint64_t rows_per_group = U64(swiglu ? rows_per_lane / 2 : rows_per_lane) *
                                        (config.matvec_workgroup / config.matvec_k_lanes);
        DUET_RETURN_IF_ERROR(
            cl.Dispatch(*pipeline, {chunk.view, xw.view, yw[0].view, yw[1].view, yw[2].view}, push,
                        Groups1D((U64(rows) + rows_per_group - 1) / rows_per_group, max_x)));
      } else {
        const MatMulPush push{U32(w.cols), U32(chunk.num_rows), U32(row_bytes), U32(x_stride),
                              xw.offset,   U32(outs[0].stride), y_offset,       U32(count)};
        const uint64_t row_tiles = (U64(chunk.num_rows) + tile.rows - 1) / tile.rows;
        const uint64_t token_tiles = (U64(count) + tile.tokens - 1) / tile.tokens;
        if (row_tiles > max_x || token_tiles > limits.max_workgroup_count[1]) {
          return absl::InvalidArgumentError(absl::StrCat(
              kOp, ": ", row_tiles, " x ", token_tiles, " tiles exceed the workgroup count limit"));
        }
        DUET_RETURN_IF_ERROR(cl.Dispatch(*pipeline, {chunk.view, xw.view, yw[0].view}, push,
                                         Groups{U32(row_tiles), U32(token_tiles), 1}));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RecordMatMul(CommandList& cl, const Kernels& kernels, const WeightView& w,
                          BufferView x, BufferView y, int64_t n_tokens, const MatMulLayout& layout,
                          const MatMulConfig* config) {
  const int64_t out_rows = layout.epilogue == MatMulEpilogue::kSwiGlu ? w.rows / 2 : w.rows;
  const OutputRegion out{y, layout.y_stride == 0 ? out_rows : layout.y_stride, layout.y_column,
                         out_rows};
  return RecordMatrix(cl, kernels, w, x, layout.x_stride, {&out, 1}, n_tokens, layout.epilogue,
                      config);
}

absl::Status RecordMatVecSplit(CommandList& cl, const Kernels& kernels, const WeightView& w,
                               BufferView x, absl::Span<const MatMulOutput> outputs,
                               int64_t n_tokens, const MatMulConfig* config) {
  if (outputs.empty() || outputs.size() > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("RecordMatVecSplit: ", outputs.size(), " outputs, not 1 to 3"));
  }
  std::vector<OutputRegion> regions;
  for (const MatMulOutput& out : outputs) regions.push_back({out.y, out.rows, 0, out.rows});
  return RecordMatrix(cl, kernels, w, x, 0, regions, n_tokens, MatMulEpilogue::kStore, config);
}

}  // namespace duet::vk
