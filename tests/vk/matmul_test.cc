// Matrix kernels (matvec.comp, matmul.comp through RecordMatMul) for F32 / F16 / Q8_0 / Q4_0
// weights against the CPU reference (DotRow, accumulated in double).
//
// Tolerance (RelTol): each output is compared relative to its row's scale S = sum_c |w[r, c] *
// x[t, c]|: |got - want| <= RelTol(type) * S. Dequantization is exact on both sides (the
// quantized matvec on CPU devices sums q * x over a block and multiplies by the block's scale
// once), so what differs is f32 rounding: at most K * 2^-24 * S for a K-term sum and in practice
// a random walk near sqrt(K) * 2^-24 * S (2e-6 * S at K = 4096); 2e-5 holds for every type.
// Outputs are poisoned with NaN first, and the padding of every input is filled with NaN bit
// patterns, so a read of a wrong byte or a missing store shows up.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/model/ggml_types.h"
#include "common/model/quant.h"
#include "common/vk/ops_matmul.h"
#include "tests/vk/matmul_test_util.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using testing::Configs;
using testing::Download;
using testing::HostWeight;
using testing::MakeActivations;
using testing::MakeWeight;
using testing::PoisonedBuffer;
using testing::RandomFloats;
using testing::RelTol;
using testing::UploadBytes;

struct Shape {
  int64_t cols;  // in
  int64_t rows;  // out
  int64_t n_tokens;
};

// Runs RecordMatMul and checks every output against DotRow, and that y outside the written
// slice keeps its poison.
void CheckMatMul(Device& device, Kernels& kernels, CommandList& cl, std::mt19937& rng,
                 GgmlType type, const Shape& s, const MatMulConfig& config,
                 const MatMulLayout& layout = {}, int64_t row_stride = 0) {
  SCOPED_TRACE(::testing::Message()
               << GgmlTypeName(type) << " cols " << s.cols << " rows " << s.rows << " tokens "
               << s.n_tokens << " via " << MatMulKernelName(config, s.n_tokens) << " k_lanes "
               << config.matvec_k_lanes << " shared " << config.shared_tiles << " texel "
               << config.texel_reads << " x_stride "
               << layout.x_stride << " y_stride " << layout.y_stride << " row_stride "
               << row_stride);
  const int64_t x_stride = layout.x_stride == 0 ? s.cols : layout.x_stride;
  const int64_t y_stride = layout.y_stride == 0 ? s.rows : layout.y_stride;
  const HostWeight w = MakeWeight(rng, type, s.rows, s.cols, row_stride);
  const std::vector<float> x = MakeActivations(rng, s.n_tokens, x_stride, s.cols);

  Buffer w_buf = UploadBytes(device, w.bytes.data(), w.bytes.size(), MemoryKind::kDevice);
  Buffer x_buf = UploadBytes(device, x.data(), x.size() * 4, MemoryKind::kDevice);
  const uint64_t y_bytes = static_cast<uint64_t>(s.n_tokens * y_stride) * 4;
  Buffer y_buf = PoisonedBuffer(device, y_bytes);
  const WeightView wv{type, s.rows, s.cols, w_buf.view(), row_stride};
  const absl::Status status =
      RecordMatMul(cl, kernels, wv, x_buf.view(), y_buf.view(), s.n_tokens, layout, &config);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_TRUE(cl.Submit().ok());
  const std::vector<float> y = Download<float>(device, y_buf.view());

  const double tol = RelTol(type);
  int failures = 0;
  double worst = 0.0;
  for (int64_t t = 0; t < s.n_tokens; ++t) {
    const float* xt = x.data() + t * x_stride;
    for (int64_t c = 0; c < y_stride; ++c) {
      const float got = y[static_cast<size_t>(t * y_stride + c)];
      const int64_t r = c - layout.y_column;
      if (r < 0 || r >= s.rows) {
        if (!std::isnan(got) && ++failures <= 5) {
          ADD_FAILURE() << "y[" << t << ", " << c << "] outside the output was written: " << got;
        }
        continue;
      }
      const double want = DotRow(type, w.bytes.data() + r * w.row_bytes, xt, s.cols);
      double scale = 0.0;
      for (int64_t k = 0; k < s.cols; ++k) {
        scale += std::fabs(static_cast<double>(w.values[static_cast<size_t>(r * s.cols + k)]) *
                           static_cast<double>(xt[k]));
      }
      const double err = std::fabs(static_cast<double>(got) - want);
      worst = std::max(worst, scale > 0 ? err / scale : err);
      if (!(err <= tol * scale + 1e-30) && ++failures <= 5) {
        ADD_FAILURE() << "y[" << t << ", " << r << "] = " << got << ", want " << want << " (error "
                      << err << ", row scale " << scale << ")";
      }
    }
  }
  EXPECT_EQ(failures, 0) << "worst error / scale " << worst;
}

class MatMulTest : public testing::VkTest, public ::testing::WithParamInterface<GgmlType> {};
class MatMulErrorsTest : public testing::VkTest {};

// Token counts are drawn from a small set (1, 3, 8 for matvec; matmul otherwise) because each
// matvec batch size is its own pipeline, and compiling one costs seconds on lavapipe.
TEST_P(MatMulTest, MatchesCpuReference) {
  const GgmlType type = GetParam();
  const bool blocked = TraitsOf(type).block_size > 1;
  std::mt19937 rng(testing::TestSeed());
  std::vector<Shape> shapes = {
      {32, 1, 1},    {64, 3, 3},    {96, 7, 8},    {576, 17, 1}, {576, 64, 8},
      {96, 100, 17}, {160, 33, 64}, {576, 100, 9}, {64, 5, 100}, {1536, 40, 3},
  };
  if (!blocked) {
    // Rows whose length is not a multiple of the 32-element unit, of 8 (F16) or of 4 (F32).
    shapes.push_back({77, 13, 1});
    shapes.push_back({77, 13, 19});
    shapes.push_back({100, 9, 3});
    shapes.push_back({40, 21, 33});
    shapes.push_back({1, 5, 8});
  }
  const std::vector<MatMulConfig> configs = Configs(device());
  for (size_t i = 0; i < configs.size(); ++i) {
    for (size_t k = 0; k < shapes.size(); ++k) {
      // The device's own configuration gets every shape; the others every other one.
      if (i > 0 && k % 2 == 1) continue;
      CheckMatMul(device(), kernels(), cl(), rng, type, shapes[k], configs[i]);
      if (::testing::Test::HasFailure()) return;
    }
  }
}

// Rows padded to 16-byte boundaries (WeightView::row_stride, what the Vulkan engine uploads on
// CPU devices): quantized rows then take the matvec's runs of 8 blocks, including runs cut
// short (2, 18 and 33 blocks per row) and rows of fewer than 8 blocks.
TEST_P(MatMulTest, PaddedRowsMatchCpuReference) {
  const GgmlType type = GetParam();
  std::mt19937 rng(testing::TestSeed());
  const std::vector<Shape> shapes = {{64, 5, 1},  {256, 9, 3},   {576, 17, 1},
                                     {576, 40, 8}, {1056, 11, 1}, {96, 30, 20}};
  const std::vector<MatMulConfig> configs = Configs(device());
  for (size_t i = 0; i < configs.size(); ++i) {
    for (size_t k = 0; k < shapes.size(); ++k) {
      const int64_t aligned = AlignedRowStride(type, shapes[k].cols);
      for (int64_t stride : {aligned, aligned + 32}) {
        if (i > 0 && stride != aligned) continue;
        CheckMatMul(device(), kernels(), cl(), rng, type, shapes[k], configs[i], {}, stride);
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

TEST_P(MatMulTest, StridedInputsAndColumnSliceOfOutput) {
  const GgmlType type = GetParam();
  std::mt19937 rng(testing::TestSeed());
  const std::vector<MatMulConfig> configs = Configs(device());
  for (size_t i = 0; i < configs.size(); ++i) {
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{40}}) {
      // x_stride 70: vectors start off a 16-byte boundary (the misaligned-x specialization).
      if (i == 0) {
        CheckMatMul(device(), kernels(), cl(), rng, type, {64, 24, n}, configs[i],
                    MatMulLayout{.x_stride = 70, .y_stride = 37, .y_column = 5});
      }
      CheckMatMul(device(), kernels(), cl(), rng, type, {96, 8, n}, configs[i],
                  MatMulLayout{.x_stride = 128, .y_stride = 13, .y_column = 4});
    }
  }
}

// The engine decodes with matvec at every batch size and relies on each sequence's result not
// depending on what else is in the batch: a vector's sums must be bit-identical whether it runs
// alone (NUM_VECS 1), in a group of 3 or 8, or in the second group of a 12-token batch.
TEST_P(MatMulTest, MatVecResultsDoNotDependOnTheBatch) {
  const GgmlType type = GetParam();
  std::mt19937 rng(testing::TestSeed());
  const int64_t rows = 70;
  const int64_t cols = 192;
  const HostWeight w = MakeWeight(rng, type, rows, cols);
  const int64_t n = 12;
  const std::vector<float> x = MakeActivations(rng, n, cols, cols);
  Buffer w_buf = UploadBytes(device(), w.bytes.data(), w.bytes.size(), MemoryKind::kDevice);
  Buffer x_buf = UploadBytes(device(), x.data(), x.size() * 4, MemoryKind::kDevice);
  MatMulConfig config = DefaultMatMulConfig(device());
  config.matvec_max_tokens = n;
  const WeightView wv{type, rows, cols, w_buf.view()};
  const auto run = [&](int64_t first, int64_t count) {
    Buffer y = PoisonedBuffer(device(), static_cast<uint64_t>(count * rows) * 4);
    const uint64_t x_bytes = MatMulActivationBytes(count, cols, cols);
    const BufferView xs = x_buf.view(static_cast<uint64_t>(first * cols) * 4, x_bytes);
    EXPECT_TRUE(RecordMatMul(cl(), kernels(), wv, xs, y.view(), count, {}, &config).ok());
    EXPECT_TRUE(cl().Submit().ok());
    return Download<float>(device(), y.view());
  };
  const std::vector<float> all = run(0, n);  // groups of 8 and 4
  for (int64_t first : {int64_t{0}, int64_t{8}}) {
    for (int64_t count : {int64_t{1}, int64_t{3}}) {
      const std::vector<float> part = run(first, count);
      for (int64_t i = 0; i < count * rows; ++i) {
        ASSERT_EQ(std::memcmp(&part[static_cast<size_t>(i)],
                              &all[static_cast<size_t>(first * rows + i)], 4),
                  0)
            << "token " << first + i / rows << " row " << i % rows << " alone in a group of "
            << count << ": " << part[static_cast<size_t>(i)] << " vs "
            << all[static_cast<size_t>(first * rows + i)];
      }
    }
  }
}

TEST_P(MatMulTest, WeightSplitIntoChunks) {
  const GgmlType type = GetParam();
  std::mt19937 rng(testing::TestSeed());
  for (MatMulConfig config : Configs(device())) {
    // 300 rows of 64 elements (68 to 256 bytes each) in chunks of at most 1 KiB: 22 to 75
    // dispatches, each chunk starting aligned and writing its rows of y at an offset.
    config.max_chunk_bytes = 1024;
    CheckMatMul(device(), kernels(), cl(), rng, type, {64, 300, 3}, config);
    CheckMatMul(device(), kernels(), cl(), rng, type, {64, 300, 20}, config);
  }
}

TEST_P(MatMulTest, DeviceWithSmallBindableRange) {
  const GgmlType type = GetParam();
  DeviceOptions options;
  options.device = std::to_string(device().info().index);
  options.max_storage_buffer_range_override = 4096;
  std::unique_ptr<Device> small = std::move(Device::Create(options)).value();
  Kernels small_kernels(small.get());
  std::unique_ptr<CommandList> small_cl = std::move(CommandList::Create(small.get())).value();
  std::mt19937 rng(testing::TestSeed());
  // Weight split into 4 KiB chunks; x (40 tokens x 256 floats = 40 KiB) and y split into
  // token groups that each fit the range.
  const MatMulConfig config = DefaultMatMulConfig(*small);
  CheckMatMul(*small, small_kernels, *small_cl, rng, type, {256, 70, 40}, config);
  CheckMatMul(*small, small_kernels, *small_cl, rng, type, {256, 70, 7}, config);
}

// A real weight just over the device's maxStorageBufferRange (128 MiB on lavapipe): Q8_0 blocks
// written directly (random scales and quants), every output checked for NaN and a sample of
// rows, including both sides of each chunk boundary, against DotRow.
TEST_F(MatMulErrorsTest, Q8_0WeightLargerThanMaxStorageBufferRange) {
  const uint64_t range = device().limits().max_storage_buffer_range;
  if (range > (uint64_t{256} << 20)) GTEST_SKIP() << "maxStorageBufferRange " << range;
  const int64_t cols = 4096;
  const int64_t row_bytes = GgmlRowBytes(GgmlType::kQ8_0, cols);
  const int64_t rows = static_cast<int64_t>(range / row_bytes) + 100;
  std::mt19937 rng(testing::TestSeed());
  std::vector<uint8_t> bytes(MatMulWeightBytes(GgmlType::kQ8_0, rows, cols), 0xff);
  std::uniform_int_distribution<int> q(-127, 127);
  std::uniform_real_distribution<float> d(0.001f, 0.01f);
  for (int64_t b = 0; b < rows * cols / 32; ++b) {
    uint8_t* block = bytes.data() + b * 34;
    const uint16_t h = FloatToHalf(d(rng));
    std::memcpy(block, &h, 2);
    for (int j = 0; j < 32; ++j) block[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q(rng)));
  }
  const std::vector<float> x = RandomFloats(rng, static_cast<size_t>(cols), -1.0f, 1.0f);
  Buffer w_buf = UploadBytes(device(), bytes.data(), bytes.size(), MemoryKind::kDevice);
  Buffer x_buf = UploadBytes(device(), x.data(), x.size() * 4, MemoryKind::kDevice);
  Buffer y_buf = PoisonedBuffer(device(), static_cast<uint64_t>(rows) * 4);
  const WeightView wv{GgmlType::kQ8_0, rows, cols, w_buf.view()};
  ASSERT_TRUE(RecordMatMul(cl(), kernels(), wv, x_buf.view(), y_buf.view(), 1).ok());
  EXPECT_GE(cl().num_recorded(), 2);  // at least two chunks
  ASSERT_TRUE(cl().Submit().ok());
  const std::vector<float> y = Download<float>(device(), y_buf.view());
  const int64_t rows_per_chunk = static_cast<int64_t>(range / row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_FALSE(std::isnan(y[static_cast<size_t>(r)])) << "row " << r;
    const bool near_boundary = std::llabs(r % rows_per_chunk) < 3 ||
                               rows_per_chunk - r % rows_per_chunk < 3 || r >= rows - 3;
    if (r % 997 != 0 && !near_boundary) continue;
    const uint8_t* row = bytes.data() + r * row_bytes;
    const double want = DotRow(GgmlType::kQ8_0, row, x.data(), cols);
    double scale = 0.0;
    std::vector<float> deq(static_cast<size_t>(cols));
    DequantizeRow(GgmlType::kQ8_0, row, deq.data(), cols);
    for (int64_t k = 0; k < cols; ++k) scale += std::fabs(double{deq[k]} * x[k]);
    EXPECT_LE(std::fabs(y[static_cast<size_t>(r)] - want), RelTol(GgmlType::kQ8_0) * scale)
        << "row " << r;
  }
}

TEST_F(MatMulErrorsTest, RejectsBadArguments) {
  Buffer b = PoisonedBuffer(device(), 1 << 16);
  const BufferView v = b.view();
  const auto run = [&](const WeightView& w, BufferView x, BufferView y, int64_t n,
                       const MatMulLayout& layout = {}) {
    return RecordMatMul(cl(), kernels(), w, x, y, n, layout).code();
  };
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(run({GgmlType::kQ4_K, 4, 256, v}, v, v, 1), kInvalid);             // no kernel
  EXPECT_EQ(run({GgmlType::kBF16, 4, 64, v}, v, v, 1), kInvalid);              // no kernel
  EXPECT_EQ(run({GgmlType::kQ8_0, 4, 40, v}, v, v, 1), kInvalid);              // partial block
  EXPECT_EQ(run({GgmlType::kF32, 0, 64, v}, v, v, 1), kInvalid);               // empty
  EXPECT_EQ(run({GgmlType::kF32, 4, 64, v}, v, v, 0), kInvalid);               // no tokens
  EXPECT_EQ(run({GgmlType::kF32, 4, 64, v.Sub(0, 1000)}, v, v, 1), kInvalid);  // small weight
  EXPECT_EQ(run({GgmlType::kQ8_0, 4, 64, v, 72}, v, v, 1), kInvalid);  // stride not 16-aligned
  EXPECT_EQ(run({GgmlType::kQ8_0, 4, 64, v, 48}, v, v, 1), kInvalid);  // stride < row bytes
  EXPECT_EQ(run({GgmlType::kF32, 4, 64, v}, v.Sub(0, 200), v, 1), kInvalid);   // small x
  EXPECT_EQ(run({GgmlType::kF32, 4, 64, v}, v, v.Sub(0, 8), 2), kInvalid);     // small y
  EXPECT_EQ(run({GgmlType::kF32, 4, 64, v}, v, v, 1, {.x_stride = 32}), kInvalid);
  EXPECT_EQ(run({GgmlType::kF32, 4, 64, v}, v, v, 1, {.y_stride = 6, .y_column = 3}), kInvalid);
  const uint64_t align =
      std::max(kMatMulAlignment, device().limits().min_storage_buffer_offset_alignment);
  EXPECT_EQ(run({GgmlType::kF32, 4, 64, v.Sub(align / 2, 4096)}, v, v, 1), kInvalid);
  MatMulConfig bad = DefaultMatMulConfig(device());
  bad.matvec_k_lanes = 3;
  EXPECT_EQ(RecordMatMul(cl(), kernels(), {GgmlType::kF32, 4, 64, v}, v, v, 1, {}, &bad).code(),
            kInvalid);
  EXPECT_EQ(cl().num_recorded(), 0);
}

INSTANTIATE_TEST_SUITE_P(Types, MatMulTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0,
                                           GgmlType::kQ4_0),
                         [](const ::testing::TestParamInfo<GgmlType>& param_info) {
                           return std::string(GgmlTypeName(param_info.param));
                         });

}  // namespace
}  // namespace duet::vk
