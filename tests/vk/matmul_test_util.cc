#include "tests/vk/matmul_test_util.h"

#include <algorithm>
#include <cmath>

#include "common/model/quant.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk::testing {

double RelTol(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
      return 2e-5;
    default:
      return 0.0;
  }
}

HostWeight MakeWeight(std::mt19937& rng, GgmlType type, int64_t rows, int64_t cols,
                      int64_t row_stride) {
  HostWeight w;
  w.row_bytes = row_stride > 0 ? row_stride : GgmlRowBytes(type, cols);
  w.bytes.assign(MatMulWeightBytes(type, rows, cols, row_stride), 0xff);
  w.values.resize(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> row = RandomFloats(rng, static_cast<size_t>(cols), -1.0f, 1.0f);
    uint8_t* dst = w.bytes.data() + r * w.row_bytes;
    QuantizeRow(type, row.data(), dst, cols);
    DequantizeRow(type, dst, w.values.data() + r * cols, cols);
  }
  return w;
}

std::vector<float> MakeActivations(std::mt19937& rng, int64_t n, int64_t stride, int64_t cols) {
  std::vector<float> x(MatMulActivationBytes(n, stride, cols) / 4, std::nanf(""));
  for (int64_t t = 0; t < n; ++t) {
    const std::vector<float> row = RandomFloats(rng, static_cast<size_t>(cols), -1.0f, 1.0f);
    std::copy(row.begin(), row.end(), x.begin() + t * stride);
  }
  return x;
}

std::vector<MatMulConfig> Configs(const Device& device) {
  MatMulConfig native = DefaultMatMulConfig(device);
  MatMulConfig other = native;
  const uint32_t subgroup = std::max<uint32_t>(device.limits().subgroup_size, 1);
  if (native.matvec_k_lanes == 1) {
    other.matvec_k_lanes = std::min<uint32_t>(8, subgroup);
    other.matvec_rows_per_lane = 1;
    other.matvec_workgroup = std::max<uint32_t>(32, subgroup);
  } else {
    other.matvec_k_lanes = 1;
    other.matvec_rows_per_lane = 2;
  }
  other.shared_tiles = !native.shared_tiles;
  other.tile_rows = 32;
  other.tile_tokens = 16;
  other.thread_rows = 4;
  other.thread_tokens = 2;
  // Odd sub-tiles and rows per lane: exercises the clamping of rows and tokens at the edges.
  MatMulConfig odd = native;
  odd.matvec_rows_per_lane = 3;
  odd.matvec_x_broadcast = !native.matvec_x_broadcast;
  odd.tile_rows = 24;
  odd.tile_tokens = 8;
  odd.thread_rows = 3;
  odd.thread_tokens = 1;
  odd.shared_tiles = true;
  // Both read paths (storage buffers, texel buffers) on every device.
  other.texel_reads = !native.texel_reads;
  return {native, other, odd};
}

}  // namespace duet::vk::testing
