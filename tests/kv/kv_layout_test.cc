#include <gtest/gtest.h>

#include <cstdint>

#include "common/kv/paged_kv.h"

namespace duet::kv {
namespace {

KvLayout Layout(CacheDtype dtype, int64_t head_dim, int64_t num_blocks = 0) {
  KvLayout layout;
  layout.num_layers = 2;
  layout.num_kv_heads = 3;
  layout.head_dim = head_dim;
  layout.dtype = dtype;
  layout.num_blocks = num_blocks;
  return layout;
}

TEST(KvLayoutTest, DtypeNames) {
  EXPECT_EQ(CacheDtypeName(CacheDtype::kFp8E4M3), "fp8");
  EXPECT_EQ(*ParseCacheDtype("F16"), CacheDtype::kF16);
  EXPECT_EQ(*ParseCacheDtype("fp8_e4m3"), CacheDtype::kFp8E4M3);
  EXPECT_EQ(ParseCacheDtype("bf16").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvLayoutTest, ByteMath) {
  KvLayout layout = Layout(CacheDtype::kFp8E4M3, 64, 10);
  layout.num_tail_slots = 4;
  ASSERT_TRUE(layout.Validate().ok());
  EXPECT_EQ(layout.tile_data_bytes(), 16 * 64);
  EXPECT_EQ(layout.tile_scale_bytes(), 4);
  EXPECT_EQ(layout.layer_data_bytes(), 10 * 3 * 16 * 64);
  EXPECT_EQ(layout.layer_scale_bytes(), 10 * 3 * 4);
  EXPECT_EQ(layout.block_bytes(), 2 * 2 * 3 * (16 * 64 + 4));
  EXPECT_EQ(layout.pool_bytes(), 10 * layout.block_bytes());
  EXPECT_EQ(layout.tail_slot_bytes(), 2 * 2 * 3 * 16 * 64 * 2);
  EXPECT_EQ(layout.tail_bytes(), 4 * layout.tail_slot_bytes());
  EXPECT_EQ(layout.total_bytes(), layout.pool_bytes() + layout.tail_bytes());
  EXPECT_EQ(layout.token_capacity(), 160);
  // Offsets walk the documented nesting.
  EXPECT_EQ(layout.PoolOffset(1, 0, 0), 3 * 16 * 64);
  EXPECT_EQ(layout.PoolOffset(0, 1, 2), (16 + 2) * 64);
  EXPECT_EQ(layout.ScaleOffset(2, 1), 7);
  EXPECT_EQ(layout.TailOffset(1, 0, KvPart::kK, 0, 0), layout.tail_slot_elements());
  EXPECT_EQ(layout.TailOffset(0, 1, KvPart::kV, 2, 3), ((((1 * 2) + 1) * 3 + 2) * 16 + 3) * 64);

  const KvLayout f16 = Layout(CacheDtype::kF16, 64, 10);
  EXPECT_EQ(f16.block_bytes(), 2 * 2 * 3 * 16 * 64 * 2);
  EXPECT_EQ(f16.layer_scale_bytes(), 0);
  EXPECT_EQ(f16.tail_bytes(), 0);
  EXPECT_EQ(Layout(CacheDtype::kF32, 64, 10).block_bytes(), 2 * f16.block_bytes());
}

TEST(KvLayoutTest, Fp8StaysWithinTheBytesBudget) {
  EXPECT_NEAR(Fp8BytesRatio(16, 64), 0.502, 0.0005);
  EXPECT_NEAR(Fp8BytesRatio(16, 8), 0.516, 0.0005);
  for (int64_t head_dim : {8, 16, 32, 64, 80, 96, 128, 256}) {
    EXPECT_LE(Fp8BytesRatio(kDefaultBlockSize, head_dim), kMaxFp8BytesRatio) << head_dim;
    EXPECT_LE(
        static_cast<double>(Layout(CacheDtype::kFp8E4M3, head_dim).block_bytes()),
        kMaxFp8BytesRatio * static_cast<double>(Layout(CacheDtype::kF16, head_dim).block_bytes()))
        << head_dim;
  }
}

TEST(KvLayoutTest, Fp8PoolHoldsAlmostTwiceTheTokens) {
  for (int64_t head_dim : {8, 64, 128}) {
    for (int64_t pool_bytes : {int64_t{1} << 20, int64_t{64} << 20, int64_t{8} << 30}) {
      const KvLayout f16 = Layout(CacheDtype::kF16, head_dim);
      const KvLayout fp8 = Layout(CacheDtype::kFp8E4M3, head_dim);
      const int64_t f16_tokens = BlocksThatFit(f16, pool_bytes) * f16.block_size;
      const int64_t fp8_tokens = BlocksThatFit(fp8, pool_bytes) * fp8.block_size;
      ASSERT_GT(f16_tokens, 0);
      EXPECT_GE(static_cast<double>(fp8_tokens), 1.9 * static_cast<double>(f16_tokens))
          << "head_dim " << head_dim << ", " << pool_bytes << " bytes";
    }
  }
}

TEST(KvLayoutTest, ValidateRejectsBadLayouts) {
  EXPECT_TRUE(Layout(CacheDtype::kF16, 8, 1).Validate().ok());
  EXPECT_FALSE(Layout(CacheDtype::kF16, 6, 1).Validate().ok());  // head_dim % 4
  EXPECT_FALSE(Layout(CacheDtype::kF16, 0, 1).Validate().ok());
  KvLayout layout = Layout(CacheDtype::kF16, 64, 1);
  layout.block_size = 12;  // not a power of two
  EXPECT_FALSE(layout.Validate().ok());
  layout = Layout(CacheDtype::kF16, 64, 1);
  layout.num_tail_slots = 2;  // only FP8 has a tail
  EXPECT_FALSE(layout.Validate().ok());
  layout = Layout(CacheDtype::kFp8E4M3, 8, 1);
  layout.block_size = 4;  // (32 + 4) / 64 = 0.5625 of f16's bytes
  const absl::Status status = layout.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("0.53"), std::string_view::npos) << status;
  EXPECT_FALSE(PagedKvCache::Create(Layout(CacheDtype::kF16, 64, 0)).ok());  // no blocks
}

}  // namespace
}  // namespace duet::kv
