// SPIR-V reflection over the embedded kernels.
#include "common/vk/spirv_reflect.h"

#include <gtest/gtest.h>

#include "common/vk/pipeline.h"

namespace duet::vk {
namespace {

TEST(SpirvReflectTest, EveryEmbeddedKernelReflects) {
  for (int i = 0; i < kNumKernels; ++i) {
    const KernelId id = static_cast<KernelId>(i);
    const absl::StatusOr<SpirvInterface> iface = ReflectSpirv(KernelSpirv(id));
    ASSERT_TRUE(iface.ok()) << KernelName(id) << ": " << iface.status();
    EXPECT_FALSE(iface->has_other_descriptors) << KernelName(id);
    EXPECT_LE(iface->push_constant_bytes, kMaxPushConstantBytes) << KernelName(id);
    EXPECT_FALSE(iface->storage_buffer_bindings.empty()) << KernelName(id);
  }
}

// Whichever idiom a shader uses for a tunable workgroup size (local_size_x_id with
// local_size_x, or next to a constant_id constant), the reflected size is that constant's
// default, never glslang's placeholder 1.
TEST(SpirvReflectTest, LocalSizeFollowsItsSpecConstant) {
  for (int i = 0; i < kNumKernels; ++i) {
    const KernelId id = static_cast<KernelId>(i);
    const SpirvInterface iface = *ReflectSpirv(KernelSpirv(id));
    for (size_t d = 0; d < 3; ++d) {
      const int32_t spec = iface.local_size_spec_ids[d];
      if (spec < 0) continue;
      for (const auto& [spec_id, value] : iface.spec_defaults) {
        if (spec_id == static_cast<uint32_t>(spec)) {
          EXPECT_EQ(iface.local_size[d], value) << KernelName(id) << " dim " << d;
        }
      }
    }
  }
}

TEST(SpirvReflectTest, RmsNormInterface) {
  const absl::StatusOr<SpirvInterface> iface = ReflectSpirv(KernelSpirv(KernelId::kRmsNormF32));
  ASSERT_TRUE(iface.ok()) << iface.status();
  EXPECT_EQ(iface->push_constant_bytes, 12u);  // uint rows, uint n, float eps
  EXPECT_EQ(iface->storage_buffer_bindings, (std::vector<uint32_t>{0, 1, 2}));
  EXPECT_EQ(iface->spec_ids, (std::vector<uint32_t>{0}));
  EXPECT_EQ(iface->local_size[0], 256u);  // the constant_id 0 default
  EXPECT_EQ(iface->local_size_spec_ids[0], 0);
  EXPECT_EQ(iface->local_size_spec_ids[1], -1);
}

TEST(SpirvReflectTest, FixedLocalSizeAndLargerBlocks) {
  const absl::StatusOr<SpirvInterface> codec = ReflectSpirv(KernelSpirv(KernelId::kFp8Codec));
  ASSERT_TRUE(codec.ok()) << codec.status();
  EXPECT_EQ(codec->local_size[0], 64u);
  EXPECT_EQ(codec->local_size_spec_ids[0], -1);
  const absl::StatusOr<SpirvInterface> rows = ReflectSpirv(KernelSpirv(KernelId::kGetRowsQ8_0));
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->push_constant_bytes, 28u);
}

TEST(SpirvReflectTest, TexelBufferBindingsAndTheirComponentTypes) {
  const absl::StatusOr<SpirvInterface> mv = ReflectSpirv(KernelSpirv(KernelId::kMatvecQ8_0Texel));
  ASSERT_TRUE(mv.ok()) << mv.status();
  using Component = SpirvInterface::TexelComponent;
  // w: usamplerBuffer, x: samplerBuffer; y (and the split outputs y1, y2) stay storage buffers.
  EXPECT_EQ(mv->texel_buffer_bindings,
            (std::vector<std::pair<uint32_t, Component>>{{0, Component::kUint},
                                                         {1, Component::kFloat}}));
  EXPECT_EQ(mv->storage_buffer_bindings, (std::vector<uint32_t>{2, 3, 4}));
  EXPECT_FALSE(mv->has_other_descriptors);
  const absl::StatusOr<SpirvInterface> plain = ReflectSpirv(KernelSpirv(KernelId::kMatvecQ8_0));
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE(plain->texel_buffer_bindings.empty());
  EXPECT_EQ(plain->storage_buffer_bindings, (std::vector<uint32_t>{0, 1, 2, 3, 4}));
}

TEST(SpirvReflectTest, RejectsGarbage) {
  const std::vector<uint32_t> garbage = {1, 2, 3, 4, 5, 6};
  EXPECT_EQ(ReflectSpirv(garbage).status().code(), absl::StatusCode::kInvalidArgument);
  // A valid header followed by an instruction claiming more words than remain.
  absl::Span<const uint32_t> real = KernelSpirv(KernelId::kAddF32);
  std::vector<uint32_t> truncated(real.begin(), real.begin() + 6);
  truncated[5] = (100u << 16) | 17u;
  EXPECT_EQ(ReflectSpirv(truncated).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace duet::vk
