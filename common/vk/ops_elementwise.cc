#include "common/vk/ops_elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/vk/device.h"
#include "common/vk/dispatch_rows.h"

namespace duet::vk {
namespace {

// Shaders index elements with 32-bit uints.
constexpr uint64_t kMaxRowsPerDispatch = UINT32_MAX;

constexpr uint32_t kWorkgroupSize = 256;  // the shaders' default constant_id 0

// Push-constant blocks; each mirrors the `Push` block of its shader.
struct RmsNormPush {
  uint32_t rows;
  uint32_t n;
  float eps;
};
DUET_VK_PUSH_CONSTANTS(RmsNormPush);

struct ElementwisePush {  // add.comp, swiglu.comp
  uint32_t n;
};
DUET_VK_PUSH_CONSTANTS(ElementwisePush);

struct GetRowsPush {
  uint32_t num_tokens;
  uint32_t n;
  uint32_t row_bytes;
  uint32_t first_row;
  uint32_t chunk_rows;
  uint32_t num_rows;
  uint32_t zero_invalid;
};
DUET_VK_PUSH_CONSTANTS(GetRowsPush);

struct RopePush {
  uint32_t num_tokens;
  uint32_t num_heads;
  uint32_t head_dim;
  uint32_t half_rope;
  uint32_t row_stride;
  uint32_t num_heads2;
  uint32_t row_stride2;
};
DUET_VK_PUSH_CONSTANTS(RopePush);

uint64_t U64(int64_t v) { return static_cast<uint64_t>(v); }

absl::Status CheckView(BufferView view, uint64_t bytes, const char* op, const char* name) {
  if (view.size < bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " holds ", view.size, " bytes, the shape needs ", bytes));
  }
  return absl::OkStatus();
}

absl::Status CheckPositive(std::initializer_list<int64_t> values, const char* op) {
  for (int64_t v : values) {
    if (v <= 0 || v > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": sizes must be in [1, 2^31)"));
    }
  }
  return absl::OkStatus();
}

// Shared body of add and swiglu: out = f(a, b) over n elements, chunked by the bindable range.
absl::Status RecordBinary(CommandList& cl, const Kernels& kernels, KernelId id, BufferView a,
                          BufferView b, BufferView out, int64_t n, const char* op) {
  DUET_RETURN_IF_ERROR(CheckPositive({n}, op));
  const uint64_t bytes = U64(n) * 4;
  DUET_RETURN_IF_ERROR(CheckView(a, bytes, op, "a"));
  DUET_RETURN_IF_ERROR(CheckView(b, bytes, op, "b"));
  DUET_RETURN_IF_ERROR(CheckView(out, bytes, op, "out"));
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline, kernels.Get<ElementwisePush>(id));
  DUET_ASSIGN_OR_RETURN(const int64_t per,
                        RowsPerDispatch(kernels.device().limits(), {4}, kMaxRowsPerDispatch, op));
  const uint32_t max_x = kernels.device().limits().max_workgroup_count[0];
  for (int64_t first = 0; first < n; first += per) {
    const int64_t count = std::min(per, n - first);
    const uint64_t offset = U64(first) * 4;
    const uint64_t size = U64(count) * 4;
    DUET_RETURN_IF_ERROR(
        cl.Dispatch(*pipeline, {a.Sub(offset, size), b.Sub(offset, size), out.Sub(offset, size)},
                    ElementwisePush{static_cast<uint32_t>(count)},
                    Groups1D((U64(count) + kWorkgroupSize - 1) / kWorkgroupSize, max_x)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RecordRmsNorm(CommandList& cl, const Kernels& kernels, BufferView x, BufferView w,
                           BufferView out, int64_t rows, int64_t n, float eps) {
  constexpr const char* kOp = "RecordRmsNorm";
  DUET_RETURN_IF_ERROR(CheckPositive({rows, n}, kOp));
  const uint64_t row_bytes = U64(n) * 4;
  DUET_RETURN_IF_ERROR(CheckView(x, U64(rows) * row_bytes, kOp, "x"));
  DUET_RETURN_IF_ERROR(CheckView(out, U64(rows) * row_bytes, kOp, "out"));
  DUET_RETURN_IF_ERROR(CheckView(w, row_bytes, kOp, "w"));
  // One subgroup per row on CPU devices (no barrier: rms_norm.comp), 256 invocations on GPUs.
  const Device& device = kernels.device();
  const uint32_t wg = device.info().type == DeviceType::kCpu
                          ? std::max<uint32_t>(device.limits().subgroup_size, 1)
                          : kWorkgroupSize;
  const uint32_t spec[] = {wg};
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline,
                        kernels.Get<RmsNormPush>(KernelId::kRmsNormF32, spec));
  DUET_ASSIGN_OR_RETURN(const int64_t per, RowsPerDispatch(kernels.device().limits(), {n * 4},
                                                           kMaxRowsPerDispatch, kOp));
  const uint32_t max_x = kernels.device().limits().max_workgroup_count[0];
  for (int64_t first = 0; first < rows; first += per) {
    const int64_t count = std::min(per, rows - first);
    const uint64_t offset = U64(first) * row_bytes;
    const uint64_t size = U64(count) * row_bytes;
    DUET_RETURN_IF_ERROR(
        cl.Dispatch(*pipeline, {x.Sub(offset, size), w.Sub(0, row_bytes), out.Sub(offset, size)},
                    RmsNormPush{static_cast<uint32_t>(count), static_cast<uint32_t>(n), eps},
                    Groups1D(U64(count), max_x)));
  }
  return absl::OkStatus();
}

absl::Status RecordAdd(CommandList& cl, const Kernels& kernels, BufferView a, BufferView b,
                       BufferView out, int64_t n) {
  return RecordBinary(cl, kernels, KernelId::kAddF32, a, b, out, n, "RecordAdd");
}

absl::Status RecordSwiGlu(CommandList& cl, const Kernels& kernels, BufferView gate, BufferView up,
                          BufferView out, int64_t n) {
  return RecordBinary(cl, kernels, KernelId::kSwigluF32, gate, up, out, n, "RecordSwiGlu");
}

absl::Status RecordGetRows(CommandList& cl, const Kernels& kernels, GgmlType type, BufferView table,
                           int64_t num_rows, int64_t n, BufferView ids, BufferView out,
                           int64_t num_tokens, int64_t row_stride) {
  constexpr const char* kOp = "RecordGetRows";
  DUET_RETURN_IF_ERROR(CheckPositive({num_rows, n, num_tokens}, kOp));
  KernelId id;
  switch (type) {
    case GgmlType::kF32:
      id = KernelId::kGetRowsF32;
      break;
    case GgmlType::kF16:
      id = KernelId::kGetRowsF16;
      break;
    case GgmlType::kQ8_0:
      id = KernelId::kGetRowsQ8_0;
      break;
    case GgmlType::kQ4_0:
      id = KernelId::kGetRowsQ4_0;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": no gather kernel for type ", std::string(GgmlTypeName(type))));
  }
  const int64_t block = TraitsOf(type).block_size;
  if (n % block != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": row length ", n, " is not a multiple of the block size ", block));
  }
  const int64_t packed_row_bytes = GgmlRowBytes(type, n);
  const int64_t stride_unit = type == GgmlType::kF32 ? 4 : 2;  // the shader's read alignment
  if (row_stride != 0 && (row_stride < packed_row_bytes || row_stride % stride_unit != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": row_stride ", row_stride,
                                                   " must be 0 (packed) or a multiple of ",
                                                   stride_unit, " >= ", packed_row_bytes));
  }
  const int64_t row_bytes = row_stride > 0 ? row_stride : packed_row_bytes;
  // The shader reads whole 32-bit words, so the table's last word must be inside the view
  // (Buffer sizes are multiples of 4, so a whole-buffer view always is).
  const uint64_t table_bytes = U64(num_rows) * U64(row_bytes);
  DUET_RETURN_IF_ERROR(CheckView(table, (table_bytes + 3) & ~uint64_t{3}, kOp, "table"));
  DUET_RETURN_IF_ERROR(CheckView(ids, U64(num_tokens) * 4, kOp, "ids"));
  DUET_RETURN_IF_ERROR(CheckView(out, U64(num_tokens) * U64(n) * 4, kOp, "out"));
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline, kernels.Get<GetRowsPush>(id));
  const Device& device = kernels.device();
  // Chunks start word-aligned (the offset alignment is >= 4); the last one is extended to a
  // whole word, hence the 4 bytes of headroom under the limit.
  const uint64_t limit = (device.limits().max_storage_buffer_range & ~uint64_t{3}) - 4;
  DUET_ASSIGN_OR_RETURN(std::vector<RowChunk> chunks,
                        SplitRows(table, num_rows, row_bytes, limit,
                                  device.limits().min_storage_buffer_offset_alignment));
  RowChunk& last = chunks.back();
  last.view = table.Sub(last.view.offset - table.offset, (last.view.size + 3) & ~uint64_t{3});
  DUET_ASSIGN_OR_RETURN(const int64_t per,
                        RowsPerDispatch(device.limits(), {4, n * 4}, kMaxRowsPerDispatch, kOp));
  for (int64_t first = 0; first < num_tokens; first += per) {
    const int64_t count = std::min(per, num_tokens - first);
    const BufferView ids_chunk = ids.Sub(U64(first) * 4, U64(count) * 4);
    const BufferView out_chunk = out.Sub(U64(first) * U64(n) * 4, U64(count) * U64(n) * 4);
    for (size_t c = 0; c < chunks.size(); ++c) {
      const GetRowsPush push{static_cast<uint32_t>(count),
                             static_cast<uint32_t>(n),
                             static_cast<uint32_t>(row_bytes),
                             static_cast<uint32_t>(chunks[c].first_row),
                             static_cast<uint32_t>(chunks[c].num_rows),
                             static_cast<uint32_t>(num_rows),
                             c == 0 ? 1u : 0u};
      DUET_RETURN_IF_ERROR(
          cl.Dispatch(*pipeline, {chunks[c].view, ids_chunk, out_chunk}, push,
                      Groups1D(U64(count), device.limits().max_workgroup_count[0])));
    }
  }
  return absl::OkStatus();
}

std::vector<uint32_t> MakeRopeTable(const ModelConfig& config,
                                    absl::Span<const float> freq_factors) {
  const int64_t half = config.rope_dim / 2;
  if (!freq_factors.empty() && static_cast<int64_t>(freq_factors.size()) != half) {
    std::fprintf(stderr, "MakeRopeTable: freq_factors must be empty or [rope_dim / 2]\n");
    std::abort();
  }
  const double scale = config.rope_scaling == RopeScalingType::kLinear
                           ? static_cast<double>(config.rope_scaling_factor)
                           : 1.0;
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  std::vector<uint32_t> table(static_cast<size_t>(2 * half));
  for (int64_t i = 0; i < half; ++i) {
    double rate = std::pow(static_cast<double>(config.rope_theta),
                           -2.0 * static_cast<double>(i) / static_cast<double>(config.rope_dim)) /
                  scale;
    if (!freq_factors.empty()) rate /= static_cast<double>(freq_factors[static_cast<size_t>(i)]);
    const double turns = rate / kTwoPi;
    const double frac = turns - std::floor(turns);  // [0, 1)
    const double high = std::floor(std::ldexp(frac, 32));
    const double low = std::floor(std::ldexp(std::ldexp(frac, 32) - high, 32));
    table[static_cast<size_t>(2 * i)] = static_cast<uint32_t>(high);
    table[static_cast<size_t>(2 * i + 1)] = static_cast<uint32_t>(low);
  }
  return table;
}

absl::Status RecordRope(CommandList& cl, const Kernels& kernels, BufferView x, BufferView positions,
                        BufferView table, const RopeShape& shape, BufferView x2) {
  constexpr const char* kOp = "RecordRope";
  DUET_RETURN_IF_ERROR(
      CheckPositive({shape.num_tokens, shape.num_heads, shape.head_dim, shape.rope_dim}, kOp));
  if (shape.rope_dim % 2 != 0 || shape.rope_dim > shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": rope_dim ", shape.rope_dim, " must be even and <= head_dim ", shape.head_dim));
  }
  if (shape.num_heads2 < 0) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": num_heads2 ", shape.num_heads2, " < 0"));
  }
  const int64_t q_dim = shape.num_heads * shape.head_dim;
  const int64_t stride = shape.row_stride == 0 ? q_dim : shape.row_stride;
  const int64_t k_dim = shape.num_heads2 * shape.head_dim;
  const int64_t stride2 = shape.num_heads2 == 0 ? 0 : k_dim;
  if (stride < q_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": row_stride ", stride, " < num_heads * head_dim ", q_dim));
  }
  DUET_RETURN_IF_ERROR(
      CheckView(x, (U64(shape.num_tokens - 1) * U64(stride) + U64(q_dim)) * 4, kOp, "x"));
  if (shape.num_heads2 > 0) {
    DUET_RETURN_IF_ERROR(CheckView(x2, U64(shape.num_tokens) * U64(k_dim) * 4, kOp, "x2"));
  }
  DUET_RETURN_IF_ERROR(CheckView(positions, U64(shape.num_tokens) * 4, kOp, "positions"));
  DUET_RETURN_IF_ERROR(CheckView(table, U64(shape.rope_dim) * 4, kOp, "table"));
  const KernelId id =
      shape.layout == RopeLayout::kNeox ? KernelId::kRopeNeoxF32 : KernelId::kRopeNormF32;
  const Device& device = kernels.device();
  // One subgroup per workgroup on CPU devices: a decode step has few (token, pair) invocations,
  // and more workgroups keep more of the driver's threads busy.
  const uint32_t wg = device.info().type == DeviceType::kCpu
                          ? std::max<uint32_t>(device.limits().subgroup_size, 1)
                          : kWorkgroupSize;
  const uint32_t spec[] = {wg};
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline, kernels.Get<RopePush>(id, spec));
  DUET_ASSIGN_OR_RETURN(
      const int64_t per,
      RowsPerDispatch(device.limits(), {4, stride * 4, std::max<int64_t>(stride2, 1) * 4},
                      kMaxRowsPerDispatch, kOp));
  for (int64_t first = 0; first < shape.num_tokens; first += per) {
    const int64_t count = std::min(per, shape.num_tokens - first);
    const uint64_t x_bytes = (U64(count - 1) * U64(stride) + U64(q_dim)) * 4;
    const BufferView xs = x.Sub(U64(first) * U64(stride) * 4, x_bytes);
    // Without a second tensor, x is bound there too (never touched: num_heads2 is 0).
    const BufferView x2s = shape.num_heads2 > 0
                               ? x2.Sub(U64(first) * U64(k_dim) * 4, U64(count) * U64(k_dim) * 4)
                               : xs;
    const RopePush push{
        static_cast<uint32_t>(count),          static_cast<uint32_t>(shape.num_heads),
        static_cast<uint32_t>(shape.head_dim), static_cast<uint32_t>(shape.rope_dim / 2),
        static_cast<uint32_t>(stride),         static_cast<uint32_t>(shape.num_heads2),
        static_cast<uint32_t>(stride2)};
    const uint64_t invocations = U64(count) * U64(shape.rope_dim / 2);
    DUET_RETURN_IF_ERROR(cl.Dispatch(
        *pipeline,
        {xs, positions.Sub(U64(first) * 4, U64(count) * 4), table.Sub(0, U64(shape.rope_dim) * 4),
         x2s},
        push, Groups1D((invocations + wg - 1) / wg, device.limits().max_workgroup_count[0])));
  }
  return absl::OkStatus();
}

}  // namespace duet::vk
