#include "common/base/format.h"

#include <gtest/gtest.h>

#include "common/base/json.h"

namespace duet {
namespace {

constexpr uint64_t kGiB = 1ull << 30;

TEST(FormatTest, Bytes) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.50 KiB");
  EXPECT_EQ(FormatBytes(20 * kGiB), "20.00 GiB");
  EXPECT_EQ(FormatBytes(5 * kGiB / 2), "2.50 GiB");
}

TEST(FormatTest, Counts) {
  EXPECT_EQ(FormatCount(950), "950");
  EXPECT_EQ(FormatCount(1500), "1.50K");
  EXPECT_EQ(FormatCount(134515008), "134.52M");
  EXPECT_EQ(FormatCount(1100048384), "1.10B");
}

TEST(JsonTest, StringEscapes) {
  EXPECT_EQ(JsonString("plain"), "\"plain\"");
  EXPECT_EQ(JsonString("a\"b\\c\nd\te\x01"), "\"a\\\"b\\\\c\\nd\\te\\u0001\"");
  EXPECT_EQ(JsonString("caf\xC3\xA9"), "\"caf\xC3\xA9\"");
}

TEST(JsonTest, FloatsRoundTripAndNonFiniteIsNull) {
  EXPECT_EQ(JsonFloat(0.1f), "0.1");
  EXPECT_EQ(JsonFloat(17.023516f), "17.023516");
  EXPECT_EQ(std::stof(JsonFloat(3.14159274f)), 3.14159274f);
  EXPECT_EQ(JsonFloat(1.0f / 0.0f), "null");
}

}  // namespace
}  // namespace duet
