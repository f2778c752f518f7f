// The kernel registry: names, pipeline creation and caching, push-constant size checks.
#include "common/vk/pipeline.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/vk/spirv_reflect.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using ::testing::HasSubstr;

struct RmsNormPush {  // matches shaders/rms_norm.comp
  uint32_t rows;
  uint32_t n;
  float eps;
};
DUET_VK_PUSH_CONSTANTS(RmsNormPush);

struct WrongPush {  // one field short
  uint32_t rows;
  uint32_t n;
};
DUET_VK_PUSH_CONSTANTS(WrongPush);

TEST(KernelNamesTest, RoundTrip) {
  ASSERT_GT(kNumKernels, 0);
  for (int i = 0; i < kNumKernels; ++i) {
    const KernelId id = static_cast<KernelId>(i);
    const absl::StatusOr<KernelId> found = FindKernel(KernelName(id));
    ASSERT_TRUE(found.ok()) << found.status();
    EXPECT_EQ(*found, id);
    EXPECT_FALSE(KernelSpirv(id).empty());
  }
  EXPECT_EQ(KernelName(KernelId::kRmsNormF32), "rms_norm_f32");
  EXPECT_EQ(KernelName(KernelId::kGetRowsQ8_0), "get_rows_q8_0");
  EXPECT_EQ(FindKernel("no_such_kernel").status().code(), absl::StatusCode::kNotFound);
}

class PipelineTest : public testing::VkTest {};

TEST_F(PipelineTest, EveryKernelBuilds) {
  for (int i = 0; i < kNumKernels; ++i) {
    const KernelId id = static_cast<KernelId>(i);
    const uint32_t bytes = ReflectSpirv(KernelSpirv(id))->push_constant_bytes;
    const absl::StatusOr<const Pipeline*> pipeline = kernels().Get(id, {}, bytes);
    ASSERT_TRUE(pipeline.ok()) << KernelName(id) << ": " << pipeline.status();
    EXPECT_EQ((*pipeline)->id(), id);
    EXPECT_EQ((*pipeline)->push_constant_bytes(), bytes);
  }
}

TEST_F(PipelineTest, MismatchedPushConstantStructIsRejected) {
  const absl::StatusOr<const Pipeline*> wrong = kernels().Get<WrongPush>(KernelId::kRmsNormF32);
  ASSERT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong.status().message(), HasSubstr("rms_norm_f32"));
  EXPECT_THAT(wrong.status().message(), HasSubstr("8 bytes"));
  EXPECT_THAT(wrong.status().message(), HasSubstr("12 bytes"));
  EXPECT_TRUE(kernels().Get<RmsNormPush>(KernelId::kRmsNormF32).ok());
}

TEST_F(PipelineTest, CacheIsKeyedBySpecializationConstants) {
  const Pipeline* a = *kernels().Get<RmsNormPush>(KernelId::kRmsNormF32, {64});
  const Pipeline* b = *kernels().Get<RmsNormPush>(KernelId::kRmsNormF32, {64});
  const Pipeline* c = *kernels().Get<RmsNormPush>(KernelId::kRmsNormF32, {128});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(a->local_size()[0], 64u);
  EXPECT_EQ(c->local_size()[0], 128u);
  EXPECT_EQ(a->spec_constants(), std::vector<uint32_t>{64});
}

TEST_F(PipelineTest, TooManySpecializationConstantsAreRejected) {
  const absl::StatusOr<const Pipeline*> p =
      kernels().Get<RmsNormPush>(KernelId::kRmsNormF32, {64, 7});
  ASSERT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("constant_id 1"));
}

}  // namespace
}  // namespace duet::vk
