#include "common/model/fp8.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "common/model/quant.h"

namespace duet {
namespace {

// The value of a code straight from the definition, in double.
double ReferenceDecode(uint8_t code) {
  const int sign = (code & 0x80) != 0 ? -1 : 1;
  const int exponent = (code >> 3) & 0xF;
  const int mantissa = code & 0x7;
  if (exponent == 0xF && mantissa == 0x7) return std::numeric_limits<double>::quiet_NaN();
  if (exponent == 0) return sign * std::ldexp(mantissa / 8.0, -6);
  return sign * std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
}

// Encoding by search: the nearest of the 127 non-negative finite codes to |x| (ties to the
// even code), saturating at 448, with x's sign bit; NaN -> 0x7F with the sign.
uint8_t ReferenceEncode(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return sign | 0x7F;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 448.0) return sign | 0x7E;
  int best = 0;
  double best_distance = std::numeric_limits<double>::infinity();
  for (int code = 0; code <= 0x7E; ++code) {
    const double distance = std::fabs(a - ReferenceDecode(static_cast<uint8_t>(code)));
    if (distance < best_distance || (distance == best_distance && code % 2 == 0)) {
      best = code;
      best_distance = distance;
    }
  }
  return sign | static_cast<uint8_t>(best);
}

TEST(Fp8Test, KnownValues) {
  EXPECT_EQ(FloatToFp8E4M3(0.0f), 0x00);
  EXPECT_EQ(FloatToFp8E4M3(-0.0f), 0x80);
  EXPECT_EQ(FloatToFp8E4M3(1.0f), 0x38);
  EXPECT_EQ(FloatToFp8E4M3(-2.0f), 0xC0);
  EXPECT_EQ(FloatToFp8E4M3(448.0f), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(-448.0f), 0xFE);
  EXPECT_EQ(FloatToFp8E4M3(0x1p-9f), 0x01);           // smallest subnormal
  EXPECT_EQ(FloatToFp8E4M3(0x1p-6f), 0x08);           // smallest normal
  EXPECT_EQ(FloatToFp8E4M3(0.875f * 0x1p-6f), 0x07);  // largest subnormal
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), 0x1p-9f);
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0x7F)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0xFF)));
  EXPECT_TRUE(std::signbit(Fp8E4M3ToFloat(0x80)));
}

TEST(Fp8Test, SaturatesAndKeepsNaN) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToFp8E4M3(449.0f), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(464.0f), 0x7E);  // tie 448/480: even, and 480 does not exist
  EXPECT_EQ(FloatToFp8E4M3(1e30f), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(kInf), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(-kInf), 0xFE);
  EXPECT_EQ(FloatToFp8E4M3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(FloatToFp8E4M3(-std::numeric_limits<float>::quiet_NaN()), 0xFF);
}

TEST(Fp8Test, RoundsToNearestEven) {
  // 1 + 1/16 is halfway between 1 (mantissa 000) and 1.125 (001): to even, down.
  EXPECT_EQ(FloatToFp8E4M3(1.0625f), 0x38);
  // 1.125 + 1/16 is halfway between 001 and 010: up.
  EXPECT_EQ(FloatToFp8E4M3(1.1875f), 0x3A);
  // Subnormal ties: 2^-10 between 0 and 2^-9 -> 0; 3 * 2^-10 between codes 1 and 2 -> 2.
  EXPECT_EQ(FloatToFp8E4M3(0x1p-10f), 0x00);
  EXPECT_EQ(FloatToFp8E4M3(3 * 0x1p-10f), 0x02);
  // 15 * 2^-10 between the largest subnormal (7) and the smallest normal (8): even, up.
  EXPECT_EQ(FloatToFp8E4M3(15 * 0x1p-10f), 0x08);
  // Just above a tie goes up.
  EXPECT_EQ(FloatToFp8E4M3(std::nextafter(1.0625f, 2.0f)), 0x39);
}

TEST(Fp8Test, AllCodesDecodeAsDefinedAndRoundTrip) {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    const double expected = ReferenceDecode(code);
    const float got = Fp8E4M3ToFloat(code);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
      EXPECT_EQ(FloatToFp8E4M3(got) & 0x7F, 0x7F) << "code " << c;
      continue;
    }
    EXPECT_EQ(static_cast<double>(got), expected) << "code " << c;
    EXPECT_EQ(std::signbit(got), (c & 0x80) != 0) << "code " << c;
    EXPECT_EQ(FloatToFp8E4M3(got), code) << "code " << c;
    EXPECT_EQ(ReferenceEncode(got), code) << "code " << c;
  }
}

TEST(Fp8Test, MidpointsAndNeighboursMatchReference) {
  // Every midpoint between adjacent finite codes, and the floats either side of it.
  for (int c = 0; c < 0x7E; ++c) {
    const float lo = Fp8E4M3ToFloat(static_cast<uint8_t>(c));
    const float hi = Fp8E4M3ToFloat(static_cast<uint8_t>(c + 1));
    const float mid = static_cast<float>((static_cast<double>(lo) + hi) / 2);  // exact
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1000.0f)}) {
      EXPECT_EQ(FloatToFp8E4M3(x), ReferenceEncode(x)) << x;
      EXPECT_EQ(FloatToFp8E4M3(-x), ReferenceEncode(-x)) << -x;
    }
  }
}

TEST(Fp8Test, EveryHalfMatchesReference) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float x = HalfToFloat(static_cast<uint16_t>(h));
    ASSERT_EQ(FloatToFp8E4M3(x), ReferenceEncode(x)) << "half 0x" << std::hex << h;
  }
}

TEST(Fp8Test, RandomFloatsMatchReference) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> bits;
  std::uniform_real_distribution<float> ranged(-500.0f, 500.0f);
  std::uniform_int_distribution<int> exponent(-14, 10);
  for (int i = 0; i < 200000; ++i) {
    const float any = std::bit_cast<float>(bits(rng));
    ASSERT_EQ(FloatToFp8E4M3(any), ReferenceEncode(any)) << any;
    const float in_range = ranged(rng);
    ASSERT_EQ(FloatToFp8E4M3(in_range), ReferenceEncode(in_range)) << in_range;
    // Dense near the E4M3 range, where most of the interesting rounding happens.
    const float near = std::ldexp(ranged(rng) / 500.0f, exponent(rng));
    ASSERT_EQ(FloatToFp8E4M3(near), ReferenceEncode(near)) << near;
  }
}

TEST(Fp8Test, BlockScaleAndQuantization) {
  EXPECT_EQ(Fp8BlockScale(0.0f), 1.0f);
  EXPECT_EQ(Fp8BlockScale(448.0f), 1.0f);
  EXPECT_EQ(Fp8BlockScale(896.0f), 2.0f);
  const std::vector<float> x = {0.0f, -3.5f, 1.0f, 7.0f, std::nanf(""), -0.001f};
  EXPECT_EQ(AbsMax(x.data(), static_cast<int64_t>(x.size())), 7.0f);

  // The block's largest magnitude lands exactly on 448 and back on itself; the rest stay within
  // half an E4M3 step (2^-4 relative for normals, 2^-10 * scale for subnormals).
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> block(1024);
  for (float& v : block) v = normal(rng);
  const float amax = AbsMax(block.data(), 1024);
  const float scale = Fp8BlockScale(amax);
  std::vector<uint8_t> q(1024);
  std::vector<float> back(1024);
  QuantizeFp8(block.data(), 1024, scale, q.data());
  DequantizeFp8(q.data(), 1024, scale, back.data());
  for (int i = 0; i < 1024; ++i) {
    EXPECT_LE(std::fabs(back[i] - block[i]),
              std::max(std::fabs(block[i]) * 0x1p-4f, scale * 0x1p-10f) * 1.0001f)
        << i;
    if (std::fabs(block[i]) == amax) {
      EXPECT_EQ(q[i] & 0x7F, 0x7E);
    }
  }
}

}  // namespace
}  // namespace duet
