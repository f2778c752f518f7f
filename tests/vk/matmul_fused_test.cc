// The fused forms of the matrix kernels, each against the plain kernels it stands for, bit for
// bit (a decode step must give the same results whether the engine fuses or not):
//   - MatMulEpilogue::kAccumulate (matvec and matmul): RecordMatMul, then RecordAdd into y;
//   - MatMulEpilogue::kSwiGlu (matvec): the gate and up products, then RecordSwiGlu;
//   - RecordMatVecSplit: every output equals RecordMatMul over its own rows.
// Every launch configuration of matmul_test runs; rows of 320 elements are 10 blocks, so the
// quantized matvec takes both its unrolled run of 8 blocks and its remainder loop. Plus the
// errors these forms add.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/model/ggml_types.h"
#include "common/vk/ops_elementwise.h"
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
using testing::Upload;
using testing::UploadBytes;

constexpr int64_t kCols = 320;

// Index of the first word where a and b differ bitwise, or -1.
int64_t FirstDifference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], 4) != 0) return static_cast<int64_t>(i);
  }
  return -1;
}

class MatMulFusedTest : public testing::VkTest, public ::testing::WithParamInterface<GgmlType> {
 protected:
  // Uploads a weight of `rows` rows whose rows start at 16-byte multiples (what the engine
  // uploads on CPU devices; every part of 16 rows then starts aligned).
  void MakeDeviceWeight(std::mt19937& rng, int64_t rows) {
    stride_ = AlignedRowStride(GetParam(), kCols);
    host_ = MakeWeight(rng, GetParam(), rows, kCols, stride_);
    w_buf_ = UploadBytes(device(), host_.bytes.data(), host_.bytes.size(), MemoryKind::kDevice);
  }
  // Rows [first, first + rows) of the uploaded weight.
  WeightView Rows(int64_t first, int64_t rows) const {
    const uint64_t offset = static_cast<uint64_t>(first * stride_);
    return WeightView{GetParam(), rows, kCols,
                      w_buf_.view(offset, MatMulWeightBytes(GetParam(), rows, kCols, stride_)),
                      stride_};
  }
  std::vector<float> Submit(const Buffer& y) {
    EXPECT_TRUE(cl().Submit().ok());
    return Download<float>(device(), y.view());
  }

  int64_t stride_ = 0;
  HostWeight host_;
  Buffer w_buf_;
};

TEST_P(MatMulFusedTest, AccumulateAddsTheProductToY) {
  std::mt19937 rng(testing::TestSeed());
  const int64_t rows = 70;
  MakeDeviceWeight(rng, rows);
  std::vector<MatMulConfig> configs = Configs(device());
  configs.push_back(configs[0]);
  configs.back().max_chunk_bytes = 2048;  // several weight chunks, each adding its rows
  for (const MatMulConfig& config : configs) {
    // 1, 3: one matvec group; 12: two (8 + 4); 40: the matmul.
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{12}, int64_t{40}}) {
      SCOPED_TRACE(::testing::Message()
                   << "tokens " << n << " via " << MatMulKernelName(config, n) << " chunk "
                   << config.max_chunk_bytes << " k_lanes " << config.matvec_k_lanes);
      const std::vector<float> x = MakeActivations(rng, n, kCols, kCols);
      const std::vector<float> y0 = RandomFloats(rng, static_cast<size_t>(n * rows), -4, 4);
      Buffer x_buf = Upload(device(), x);
      Buffer fused = Upload(device(), y0);
      ASSERT_TRUE(RecordMatMul(cl(), kernels(), Rows(0, rows), x_buf.view(), fused.view(), n,
                               {.epilogue = MatMulEpilogue::kAccumulate}, &config)
                      .ok());
      const std::vector<float> got = Submit(fused);

      Buffer product = PoisonedBuffer(device(), static_cast<uint64_t>(n * rows) * 4);
      Buffer sum = Upload(device(), y0);
      ASSERT_TRUE(
          RecordMatMul(cl(), kernels(), Rows(0, rows), x_buf.view(), product.view(), n, {}, &config)
              .ok());
      ASSERT_TRUE(
          RecordAdd(cl(), kernels(), sum.view(), product.view(), sum.view(), n * rows).ok());
      const std::vector<float> want = Submit(sum);
      const int64_t at = FirstDifference(got, want);
      ASSERT_EQ(at, -1) << "y[" << at << "] = " << got[at] << ", want " << want[at];
    }
  }
}

TEST_P(MatMulFusedTest, SwiGluEpilogueMatchesGateUpAndSwiGlu) {
  std::mt19937 rng(testing::TestSeed());
  const int64_t ffn = 48;
  MakeDeviceWeight(rng, 2 * ffn);  // gate rows, then up rows
  for (MatMulConfig config : Configs(device())) {
    config.matvec_max_tokens = 16;
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{8}, int64_t{12}}) {
      SCOPED_TRACE(::testing::Message() << "tokens " << n << " k_lanes " << config.matvec_k_lanes
                                        << " rows/lane " << config.matvec_rows_per_lane);
      const std::vector<float> x = MakeActivations(rng, n, kCols, kCols);
      Buffer x_buf = Upload(device(), x);
      Buffer fused = PoisonedBuffer(device(), static_cast<uint64_t>(n * ffn) * 4);
      ASSERT_TRUE(RecordMatMul(cl(), kernels(), Rows(0, 2 * ffn), x_buf.view(), fused.view(), n,
                               {.epilogue = MatMulEpilogue::kSwiGlu}, &config)
                      .ok());
      const std::vector<float> got = Submit(fused);

      Buffer gate = PoisonedBuffer(device(), static_cast<uint64_t>(n * ffn) * 4);
      Buffer up = PoisonedBuffer(device(), static_cast<uint64_t>(n * ffn) * 4);
      ASSERT_TRUE(
          RecordMatMul(cl(), kernels(), Rows(0, ffn), x_buf.view(), gate.view(), n, {}, &config)
              .ok());
      ASSERT_TRUE(
          RecordMatMul(cl(), kernels(), Rows(ffn, ffn), x_buf.view(), up.view(), n, {}, &config)
              .ok());
      ASSERT_TRUE(RecordSwiGlu(cl(), kernels(), gate.view(), up.view(), gate.view(), n * ffn).ok());
      const std::vector<float> want = Submit(gate);
      const int64_t at = FirstDifference(got, want);
      ASSERT_EQ(at, -1) << "y[" << at << "] = " << got[at] << ", want " << want[at];
    }
  }
}

TEST_P(MatMulFusedTest, SplitOutputsMatchOneMatMulPerPart) {
  std::mt19937 rng(testing::TestSeed());
  // q | k | v of a model with 3 query heads and 1 KV head of 16 dims.
  const std::vector<int64_t> parts = {48, 16, 16};
  MakeDeviceWeight(rng, 80);
  for (MatMulConfig config : Configs(device())) {
    config.matvec_max_tokens = 16;
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{12}}) {
      for (size_t num_outputs : {size_t{2}, size_t{3}}) {
        SCOPED_TRACE(::testing::Message() << "tokens " << n << " outputs " << num_outputs
                                          << " k_lanes " << config.matvec_k_lanes);
        // Two outputs: the first part, then the other two together.
        std::vector<int64_t> rows = parts;
        if (num_outputs == 2) rows = {parts[0], parts[1] + parts[2]};
        const std::vector<float> x = MakeActivations(rng, n, kCols, kCols);
        Buffer x_buf = Upload(device(), x);
        std::vector<Buffer> fused;
        std::vector<MatMulOutput> outputs;
        for (int64_t r : rows) {
          fused.push_back(PoisonedBuffer(device(), static_cast<uint64_t>(n * r) * 4));
          outputs.push_back({fused.back().view(), r});
        }
        ASSERT_TRUE(
            RecordMatVecSplit(cl(), kernels(), Rows(0, 80), x_buf.view(), outputs, n, &config)
                .ok());
        ASSERT_TRUE(cl().Submit().ok());
        int64_t first = 0;
        for (size_t i = 0; i < rows.size(); ++i) {
          Buffer plain = PoisonedBuffer(device(), static_cast<uint64_t>(n * rows[i]) * 4);
          ASSERT_TRUE(RecordMatMul(cl(), kernels(), Rows(first, rows[i]), x_buf.view(),
                                   plain.view(), n, {}, &config)
                          .ok());
          const std::vector<float> want = Submit(plain);
          const std::vector<float> got = Download<float>(device(), fused[i].view());
          const int64_t at = FirstDifference(got, want);
          ASSERT_EQ(at, -1) << "output " << i << " y[" << at << "] = " << got[at] << ", want "
                            << want[at];
          first += rows[i];
        }
      }
    }
  }
}

TEST_P(MatMulFusedTest, RejectsWhatOnlyThePlainKernelsTake) {
  std::mt19937 rng(testing::TestSeed());
  MakeDeviceWeight(rng, 80);
  Buffer b = PoisonedBuffer(device(), 1 << 16);
  const BufferView v = b.view();
  MatMulConfig config = DefaultMatMulConfig(device());
  config.matvec_max_tokens = 8;
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  const MatMulLayout swiglu{.epilogue = MatMulEpilogue::kSwiGlu};
  // SwiGLU: past the matvec's token count, an odd row count, a weight in several chunks.
  EXPECT_EQ(RecordMatMul(cl(), kernels(), Rows(0, 80), v, v, 9, swiglu, &config).code(), kInvalid);
  EXPECT_EQ(RecordMatMul(cl(), kernels(), Rows(0, 79), v, v, 1, swiglu, &config).code(), kInvalid);
  MatMulConfig chunked = config;
  chunked.max_chunk_bytes = 4096;
  EXPECT_EQ(RecordMatMul(cl(), kernels(), Rows(0, 80), v, v, 1, swiglu, &chunked).code(), kInvalid);
  // Split: no outputs, four, rows that do not add up, too many tokens, several chunks.
  const auto split = [&](std::vector<int64_t> rows, int64_t n, const MatMulConfig& c) {
    std::vector<MatMulOutput> outputs;
    for (int64_t r : rows) outputs.push_back({v, r});
    return RecordMatVecSplit(cl(), kernels(), Rows(0, 80), v, outputs, n, &c).code();
  };
  EXPECT_EQ(split({}, 1, config), kInvalid);
  EXPECT_EQ(split({20, 20, 20, 20}, 1, config), kInvalid);
  EXPECT_EQ(split({48, 16, 8}, 1, config), kInvalid);
  EXPECT_EQ(split({48, 16, 16, 0}, 1, config), kInvalid);
  EXPECT_EQ(split({48, 32}, 9, config), kInvalid);
  EXPECT_EQ(split({48, 32}, 1, chunked), kInvalid);
  EXPECT_EQ(split({48, 32}, 1, config), absl::StatusCode::kOk);  // the same call, well formed
  EXPECT_EQ(cl().num_recorded(), 1);
}

INSTANTIATE_TEST_SUITE_P(Types, MatMulFusedTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0,
                                           GgmlType::kQ4_0),
                         [](const ::testing::TestParamInfo<GgmlType>& param_info) {
                           return std::string(GgmlTypeName(param_info.param));
                         });

}  // namespace
}  // namespace duet::vk
