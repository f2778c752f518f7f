// RoPE (normal and NeoX layouts, partial rotation, freq factors, linear scaling) against
// cpu_ref::ApplyRope, at positions up to 10^6.
//
// Tolerance: atol 1e-5, rtol 1e-5 for |x| <= 2. The angle's turn fraction is exact (integer
// arithmetic on the host's double-precision rate), its conversion to radians in [-pi, pi) is
// within ~2e-7, and f32 sin/cos on GPUs are within ~1e-6; the reference rotates in double.
#include <gtest/gtest.h>

#include "absl/types/span.h"
#include "common/model/cpu_forward.h"
#include "common/model/model_config.h"
#include "common/vk/ops_elementwise.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using testing::AllClose;
using testing::Download;
using testing::RandomFloats;
using testing::Upload;

struct RopeCase {
  const char* name;
  int64_t num_heads;
  int64_t head_dim;
  int64_t rope_dim;
  RopeLayout layout;
  float theta;
  RopeScalingType scaling;
  float factor;
  bool freq_factors;
  int64_t extra_stride;  // row_stride - num_heads * head_dim
  int64_t num_heads2 = 0;  // heads of a second (dense) tensor rotated in the same dispatch
};

class RopeTest : public testing::VkTest, public ::testing::WithParamInterface<RopeCase> {};

TEST_P(RopeTest, MatchesApplyRope) {
  const RopeCase& c = GetParam();
  std::mt19937 rng(testing::TestSeed());
  ModelConfig config;
  config.num_heads = c.num_heads;
  config.head_dim = c.head_dim;
  config.rope_dim = c.rope_dim;
  config.rope_layout = c.layout;
  config.rope_theta = c.theta;
  config.rope_scaling = c.scaling;
  config.rope_scaling_factor = c.factor;
  std::vector<float> factors;
  if (c.freq_factors) factors = RandomFloats(rng, static_cast<size_t>(c.rope_dim / 2), 1.0f, 8.0f);

  const std::vector<int32_t> positions = {0, 1, 2, 17, 511, 4095, 32768, 131071, 1000003};
  const int64_t num_tokens = static_cast<int64_t>(positions.size());
  const int64_t q_dim = c.num_heads * c.head_dim;
  const int64_t stride = q_dim + c.extra_stride;
  const std::vector<float> x =
      RandomFloats(rng, static_cast<size_t>(num_tokens * stride), -2.0f, 2.0f);
  std::vector<float> want = x;
  for (int64_t t = 0; t < num_tokens; ++t) {
    cpu_ref::ApplyRope(config, factors, positions[static_cast<size_t>(t)], c.num_heads,
                       want.data() + t * stride);
  }

  // The second tensor (a step's k beside its q), dense; its extra head of padding must stay.
  const int64_t k_dim = c.num_heads2 * c.head_dim;
  const std::vector<float> x2 =
      RandomFloats(rng, static_cast<size_t>(num_tokens * k_dim + c.head_dim), -2.0f, 2.0f);
  std::vector<float> want2 = x2;
  for (int64_t t = 0; t < num_tokens && c.num_heads2 > 0; ++t) {
    cpu_ref::ApplyRope(config, factors, positions[static_cast<size_t>(t)], c.num_heads2,
                       want2.data() + t * k_dim);
  }

  Buffer x_buf = Upload(device(), x);
  Buffer x2_buf = Upload(device(), x2);
  Buffer pos_buf = Upload(device(), positions);
  Buffer table_buf = Upload(device(), MakeRopeTable(config, factors));
  RopeShape shape;
  shape.num_tokens = num_tokens;
  shape.num_heads = c.num_heads;
  shape.head_dim = c.head_dim;
  shape.rope_dim = c.rope_dim;
  shape.row_stride = stride;
  shape.layout = c.layout;
  shape.num_heads2 = c.num_heads2;
  ASSERT_TRUE(RecordRope(cl(), kernels(), x_buf.view(), pos_buf.view(), table_buf.view(), shape,
                         x2_buf.view())
                  .ok());
  ASSERT_TRUE(cl().Submit().ok());
  const std::vector<float> got = Download<float>(device(), x_buf.view());
  EXPECT_TRUE(AllClose(got, want, 1e-5f, 1e-5f));
  const std::vector<float> got2 = Download<float>(device(), x2_buf.view());
  EXPECT_TRUE(AllClose(absl::MakeConstSpan(got2).first(want2.size()), want2, 1e-5f, 1e-5f));
  // Pass-through dimensions and the padding between rows are untouched, bit for bit.
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t i = 0; i < stride; ++i) {
      const int64_t in_head = i % c.head_dim;
      const bool rotated = i < q_dim && in_head < c.rope_dim;
      if (!rotated) {
        ASSERT_EQ(got[t * stride + i], x[t * stride + i]) << t << " " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RopeTest,
    ::testing::Values(RopeCase{"llama_normal", 4, 64, 64, RopeLayout::kNormal, 10000.0f,
                               RopeScalingType::kNone, 1.0f, false, 0},
                      RopeCase{"qwen_neox", 3, 128, 128, RopeLayout::kNeox, 1000000.0f,
                               RopeScalingType::kNone, 1.0f, false, 0, 1},
                      RopeCase{"partial_neox_fused_rows", 2, 96, 32, RopeLayout::kNeox, 10000.0f,
                               RopeScalingType::kNone, 1.0f, false, 40, 3},
                      RopeCase{"partial_normal", 5, 80, 48, RopeLayout::kNormal, 500000.0f,
                               RopeScalingType::kNone, 1.0f, false, 0},
                      RopeCase{"linear_scaling", 2, 64, 64, RopeLayout::kNormal, 10000.0f,
                               RopeScalingType::kLinear, 4.0f, false, 0},
                      RopeCase{"freq_factors", 3, 128, 128, RopeLayout::kNormal, 500000.0f,
                               RopeScalingType::kNone, 1.0f, true, 0, 2},
                      RopeCase{"tiny_head", 1, 2, 2, RopeLayout::kNeox, 10000.0f,
                               RopeScalingType::kLinear, 2.0f, true, 3}),
    [](const ::testing::TestParamInfo<RopeCase>& param_info) { return param_info.param.name; });

class RopeErrorsTest : public testing::VkTest {};

TEST_F(RopeErrorsTest, RejectsBadShapes) {
  Buffer b = testing::PoisonedBuffer(device(), 4096);
  RopeShape shape{.num_tokens = 2, .num_heads = 2, .head_dim = 8, .rope_dim = 7};
  EXPECT_EQ(RecordRope(cl(), kernels(), b.view(), b.view(), b.view(), shape).code(),
            absl::StatusCode::kInvalidArgument);
  shape.rope_dim = 16;  // > head_dim
  EXPECT_EQ(RecordRope(cl(), kernels(), b.view(), b.view(), b.view(), shape).code(),
            absl::StatusCode::kInvalidArgument);
  shape.rope_dim = 8;
  shape.row_stride = 4;  // < num_heads * head_dim
  EXPECT_EQ(RecordRope(cl(), kernels(), b.view(), b.view(), b.view(), shape).code(),
            absl::StatusCode::kInvalidArgument);
  shape.row_stride = 0;
  shape.num_heads2 = -1;
  EXPECT_EQ(RecordRope(cl(), kernels(), b.view(), b.view(), b.view(), shape, b.view()).code(),
            absl::StatusCode::kInvalidArgument);
  shape.num_heads2 = 2;  // x2 needs 2 tokens x 2 heads x 8 floats = 128 bytes
  EXPECT_EQ(
      RecordRope(cl(), kernels(), b.view(), b.view(), b.view(), shape, b.view().Sub(0, 64)).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cl().num_recorded(), 0);
}

}  // namespace
}  // namespace duet::vk
