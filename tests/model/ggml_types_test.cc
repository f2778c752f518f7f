#include "common/model/ggml_types.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

namespace duet {
namespace {

using ::testing::HasSubstr;

TEST(GgmlTypesTest, LayoutsMatchGgml) {
  // Block layouts from ggml-common.h: {block_size, bytes per block}.
  struct Case {
    GgmlType type;
    std::string_view name;
    int64_t block_size;
    int64_t type_size;
  };
  const Case cases[] = {
      {GgmlType::kF32, "f32", 1, 4},           {GgmlType::kF16, "f16", 1, 2},
      {GgmlType::kBF16, "bf16", 1, 2},         {GgmlType::kQ4_0, "q4_0", 32, 18},
      {GgmlType::kQ4_1, "q4_1", 32, 20},       {GgmlType::kQ5_0, "q5_0", 32, 22},
      {GgmlType::kQ5_1, "q5_1", 32, 24},       {GgmlType::kQ8_0, "q8_0", 32, 34},
      {GgmlType::kQ8_1, "q8_1", 32, 36},       {GgmlType::kQ2_K, "q2_K", 256, 84},
      {GgmlType::kQ3_K, "q3_K", 256, 110},     {GgmlType::kQ4_K, "q4_K", 256, 144},
      {GgmlType::kQ5_K, "q5_K", 256, 176},     {GgmlType::kQ6_K, "q6_K", 256, 210},
      {GgmlType::kQ8_K, "q8_K", 256, 292},     {GgmlType::kIQ2_XXS, "iq2_xxs", 256, 66},
      {GgmlType::kIQ2_XS, "iq2_xs", 256, 74},  {GgmlType::kIQ3_XXS, "iq3_xxs", 256, 98},
      {GgmlType::kIQ1_S, "iq1_s", 256, 50},    {GgmlType::kIQ4_NL, "iq4_nl", 32, 18},
      {GgmlType::kIQ3_S, "iq3_s", 256, 110},   {GgmlType::kIQ2_S, "iq2_s", 256, 82},
      {GgmlType::kIQ4_XS, "iq4_xs", 256, 136}, {GgmlType::kI8, "i8", 1, 1},
      {GgmlType::kI16, "i16", 1, 2},           {GgmlType::kI32, "i32", 1, 4},
      {GgmlType::kI64, "i64", 1, 8},           {GgmlType::kF64, "f64", 1, 8},
      {GgmlType::kIQ1_M, "iq1_m", 256, 56},    {GgmlType::kTQ1_0, "tq1_0", 256, 54},
      {GgmlType::kTQ2_0, "tq2_0", 256, 66},    {GgmlType::kMXFP4, "mxfp4", 32, 17},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const GgmlTypeTraits& t = TraitsOf(c.type);
    EXPECT_EQ(t.type, c.type);
    EXPECT_EQ(t.name, c.name);
    EXPECT_EQ(GgmlTypeName(c.type), c.name);
    EXPECT_EQ(t.block_size, c.block_size);
    EXPECT_EQ(t.type_size, c.type_size);
    auto by_id = GetGgmlTypeTraits(static_cast<uint32_t>(c.type));
    ASSERT_TRUE(by_id.ok()) << by_id.status();
    EXPECT_EQ(by_id->name, c.name);
  }
}

TEST(GgmlTypesTest, OnlyCodecTypesAreSupported) {
  std::set<GgmlType> supported;
  for (uint32_t id = 0; id < 64; ++id) {
    auto t = GetGgmlTypeTraits(id);
    if (t.ok() && t->supported) supported.insert(t->type);
  }
  EXPECT_EQ(supported, (std::set<GgmlType>{GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ8_0, GgmlType::kQ4_0}));
}

TEST(GgmlTypesTest, UnknownIdIsNamed) {
  // 4 and 5 were Q4_2/Q4_3, removed from ggml; their ids stay unassigned.
  for (uint32_t id : {4u, 5u, 31u, 99u, 0xFFFFFFFFu}) {
    auto t = GetGgmlTypeTraits(id);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(std::to_string(id)));
  }
}

TEST(GgmlTypesTest, ParseIsCaseInsensitive) {
  EXPECT_EQ(*ParseGgmlType("f32"), GgmlType::kF32);
  EXPECT_EQ(*ParseGgmlType("F16"), GgmlType::kF16);
  EXPECT_EQ(*ParseGgmlType("Q8_0"), GgmlType::kQ8_0);
  EXPECT_EQ(*ParseGgmlType("q4_k"), GgmlType::kQ4_K);
  EXPECT_EQ(*ParseGgmlType("BF16"), GgmlType::kBF16);
  auto bad = ParseGgmlType("q9_9");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("q9_9"));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("q8_0"));  // Lists valid names.
  EXPECT_FALSE(ParseGgmlType("").ok());
  EXPECT_FALSE(ParseGgmlType("f3").ok());
}

TEST(GgmlTypesTest, RowBytes) {
  EXPECT_EQ(GgmlRowBytes(GgmlType::kF32, 10), 40);
  EXPECT_EQ(GgmlRowBytes(GgmlType::kF16, 10), 20);
  EXPECT_EQ(GgmlRowBytes(GgmlType::kQ8_0, 64), 68);
  EXPECT_EQ(GgmlRowBytes(GgmlType::kQ4_0, 4096), 128 * 18);
  EXPECT_EQ(GgmlRowBytes(GgmlType::kQ4_K, 512), 288);
  EXPECT_EQ(GgmlRowBytes(GgmlType::kQ8_0, 0), 0);
}

}  // namespace
}  // namespace duet
