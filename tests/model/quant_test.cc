#include "common/model/quant.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace duet {
namespace {

using ::testing::ElementsAreArray;

float F(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(0.5f), 0x3800);
  EXPECT_EQ(FloatToHalf(0.1f), 0x2E66);       // 0.0999755859375, the nearest half.
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);   // Largest finite half.
  EXPECT_EQ(FloatToHalf(65519.99f), 0x7BFF);  // Just under the halfway point to 65536.
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);   // Tie between 65504 (odd) and 2^16: to inf.
  EXPECT_EQ(FloatToHalf(1e10f), 0x7C00);
  EXPECT_EQ(FloatToHalf(-1e10f), 0xFC00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xFC00);
}

TEST(HalfTest, RoundsToNearestEven) {
  // 1 + 2^-11 lies halfway between 1 (mantissa 0, even) and 1 + 2^-10 (odd): down.
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3C00);
  // 1 + 3 * 2^-11 lies halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even): up.
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3C02);
  // Just above the halfway point rounds up.
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
  // Rounding that carries into the exponent: 2 - 2^-12 -> 2.0.
  EXPECT_EQ(FloatToHalf(2.0f - 0x1p-12f), 0x4000);
}

TEST(HalfTest, Subnormals) {
  EXPECT_EQ(FloatToHalf(0x1p-14f), 0x0400);  // Smallest normal.
  EXPECT_EQ(FloatToHalf(0x1p-24f), 0x0001);  // Smallest subnormal.
  EXPECT_EQ(FloatToHalf(-0x1p-24f), 0x8001);
  EXPECT_EQ(FloatToHalf(1023.0f * 0x1p-24f), 0x03FF);  // Largest subnormal.
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000);            // Tie with 0 (even): 0.
  EXPECT_EQ(FloatToHalf(1.5f * 0x1p-25f), 0x0001);     // Above the tie: 2^-24.
  EXPECT_EQ(FloatToHalf(3.0f * 0x1p-25f), 0x0002);     // 1.5 ulps: tie to even 2.
  EXPECT_EQ(FloatToHalf(5.0f * 0x1p-25f), 0x0002);     // 2.5 ulps: tie to even 2.
  EXPECT_EQ(FloatToHalf(1023.5f * 0x1p-24f), 0x0400);  // Rounds up into normals.
  EXPECT_EQ(FloatToHalf(0x1p-30f), 0x0000);
  EXPECT_EQ(FloatToHalf(F(0x00000001)), 0x0000);  // Float subnormal.
  EXPECT_EQ(HalfToFloat(0x0001), 0x1p-24f);
  EXPECT_EQ(HalfToFloat(0x03FF), 1023.0f * 0x1p-24f);
  EXPECT_EQ(HalfToFloat(0x8000), -0.0f);
  EXPECT_TRUE(std::signbit(HalfToFloat(0x8000)));
}

TEST(HalfTest, NanStaysNan) {
  const uint16_t h = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(h & 0x7C00, 0x7C00);
  EXPECT_NE(h & 0x03FF, 0);
  EXPECT_EQ(h, 0x7E00);                           // ggml's canonical quiet NaN.
  EXPECT_EQ(FloatToHalf(F(0xFF800001)), 0xFE00);  // Signalling, negative: sign kept.
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7E00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7C01)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0xFFFF)));
  EXPECT_EQ(HalfToFloat(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xFC00), -std::numeric_limits<float>::infinity());
}

TEST(HalfTest, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const bool is_nan = (h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0;
    if (is_nan) {
      ASSERT_TRUE(std::isnan(f)) << h;
    } else {
      ASSERT_EQ(FloatToHalf(f), h) << h;
    }
  }
}

#if defined(__FLT16_MAX__)
// The compiler's _Float16 conversion is an independent round-to-nearest-even oracle.
TEST(HalfTest, MatchesCompilerConversionOnFloatSweep) {
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFull; bits += 997) {
    const float f = F(static_cast<uint32_t>(bits));
    if (std::isnan(f)) continue;
    const _Float16 h = static_cast<_Float16>(f);
    ASSERT_EQ(FloatToHalf(f), std::bit_cast<uint16_t>(h)) << std::hex << bits;
    ASSERT_EQ(Bits(HalfToFloat(std::bit_cast<uint16_t>(h))), Bits(static_cast<float>(h)));
  }
}
#endif

TEST(Bf16Test, KnownValues) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBf16(0.0f), 0x0000);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0x4049), 3.140625f);
  // 0x3F808000 = 1 + 2^-8: halfway between 0x3F80 (even) and 0x3F81: down.
  EXPECT_EQ(FloatToBf16(F(0x3F808000)), 0x3F80);
  // 0x3F818000: halfway between 0x3F81 (odd) and 0x3F82: up.
  EXPECT_EQ(FloatToBf16(F(0x3F818000)), 0x3F82);
  EXPECT_EQ(FloatToBf16(F(0x3F808001)), 0x3F81);  // Above halfway.
  EXPECT_EQ(FloatToBf16(F(0x3F807FFF)), 0x3F80);  // Below halfway.
  EXPECT_EQ(FloatToBf16(F(0x7F7FFFFF)), 0x7F80);  // FLT_MAX rounds to inf, as in ggml.
  EXPECT_EQ(FloatToBf16(F(0x00018000)), 0x0002);  // Subnormals round too (no flush).
}

TEST(Bf16Test, NanIsQuieted) {
  EXPECT_EQ(FloatToBf16(F(0x7F800001)), 0x7FC0);  // Signalling NaN with a low payload.
  EXPECT_EQ(FloatToBf16(F(0x7FC00000)), 0x7FC0);
  EXPECT_EQ(FloatToBf16(F(0xFF810000)), 0xFFC1);  // Sign and high payload bits kept.
  EXPECT_EQ(FloatToBf16(F(0x7FFFFFFF)), 0x7FFF);  // Would overflow if rounded like a number.
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7FC0)));
}

// Q8_0 block, d = 1.0 exactly (amax = 127): q = roundf(x), ties away from zero.
TEST(Q8_0Test, HandComputedBlockUnitScale) {
  std::vector<float> x(32, 0.0f);
  const float head[] = {127, -127, 0.5f, -0.5f, 1.5f, 2.5f, -2.5f, 0.49f, 3.7f, -3.7f, 100.2f};
  std::copy(std::begin(head), std::end(head), x.begin());
  // d = 127 / 127 = 1.0 -> f16 0x3C00, stored little-endian: 00 3C. Then q:
  // 127=7F, -127=81, round(0.5)=1 (01), -1 (FF), 2 (02), round(2.5)=3 (03; not even 2),
  // -3 (FD), 0 (00), 4 (04), -4 (FC), 100 (64), then 21 zeros.
  std::vector<uint8_t> expected = {0x00, 0x3C, 0x7F, 0x81, 0x01, 0xFF, 0x02,
                                   0x03, 0xFD, 0x00, 0x04, 0xFC, 0x64};
  expected.resize(34, 0x00);
  std::vector<uint8_t> out(34, 0xAA);
  QuantizeRow(GgmlType::kQ8_0, x.data(), out.data(), 32);
  EXPECT_THAT(out, ElementsAreArray(expected));

  std::vector<float> back(32);
  DequantizeRow(GgmlType::kQ8_0, out.data(), back.data(), 32);
  EXPECT_EQ(back[0], 127.0f);
  EXPECT_EQ(back[5], 3.0f);
  EXPECT_EQ(back[10], 100.0f);
}

// Q8_0 block x[j] = (j - 16) / 16: amax = 1, d = 1/127 = 0.0078740157.
TEST(Q8_0Test, HandComputedBlockInexactScale) {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16) / 16.0f;
  // d = 2^-7 * 1.00787..., mantissa 0.00787 * 1024 = 8.06 -> 8: f16 = (8 << 10) | 8 = 0x2008.
  // id = 1/d rounds to exactly 127.0f, so q = roundf(127 * (j - 16) / 16):
  // j=0: -127 (81), j=1: -119.06 -> -119 (89), ..., j=8: -63.5 -> -64 (C0), j=16: 0,
  // j=24: 63.5 -> 64 (40), j=31: 119.06 -> 119 (77).
  const std::vector<uint8_t> expected = {0x08, 0x20, 0x81, 0x89, 0x91, 0x99, 0xA1, 0xA9, 0xB1,
                                         0xB9, 0xC0, 0xC8, 0xD0, 0xD8, 0xE0, 0xE8, 0xF0, 0xF8,
                                         0x00, 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0x40,
                                         0x47, 0x4F, 0x57, 0x5F, 0x67, 0x6F, 0x77};
  std::vector<uint8_t> out(34);
  QuantizeRow(GgmlType::kQ8_0, x.data(), out.data(), 32);
  EXPECT_THAT(out, ElementsAreArray(expected));
}

TEST(Q8_0Test, ZeroBlock) {
  std::vector<float> x(64, 0.0f);
  x[40] = -0.25f;  // Second block only: d = 0.25/127.
  std::vector<uint8_t> out(68, 0xAA);
  QuantizeRow(GgmlType::kQ8_0, x.data(), out.data(), 64);
  for (int i = 0; i < 34; ++i) EXPECT_EQ(out[i], 0) << i;  // d = 0, every q = 0.
  EXPECT_EQ(static_cast<int8_t>(out[34 + 2 + 8]), -127);
}

// Q4_0 block whose largest-magnitude element is negative: max = -8, d = -8 / -8 = 1.
TEST(Q4_0Test, HandComputedBlockNegativeMax) {
  const std::vector<float> x = {-8,   8, 7, 0, 0.4f, 0.5f, -0.5f, -0.6f, -7.6f, 3.49f, 0,
                                0,    0, 0, 0, 0,    1,    -1,    2.2f,  -2.2f, 6.9f,  -6.9f,
                                0.2f, 5, 0, 0, 0,    0,    0,     0,     0,     0};
  // d = 1.0 -> f16 3C00; id = 1; q = min(15, trunc(x + 8.5)). x[1] = 8 ties |x[0]| but the
  // first wins, so max stays -8.
  // q[0..15]  = 0 (0.5), 15 (16.5 -> 16 -> 15), 15 (15.5), 8, 8 (8.9), 9 (9.0), 8 (8.0),
  //             7 (7.9), 0 (0.9), 11 (11.99), 8 x 6
  // q[16..31] = 9 (9.5), 7 (7.5), 10 (10.7), 6 (6.3), 15 (15.4), 1 (1.6), 8 (8.7), 13 (13.5),
  //             8 x 8
  // byte j = q[j] | q[j + 16] << 4.
  const std::vector<uint8_t> expected = {0x00, 0x3C, 0x90, 0x7F, 0xAF, 0x68, 0xF8, 0x19, 0x88,
                                         0xD7, 0x80, 0x8B, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88};
  std::vector<uint8_t> out(18);
  QuantizeRow(GgmlType::kQ4_0, x.data(), out.data(), 32);
  EXPECT_THAT(out, ElementsAreArray(expected));

  std::vector<float> back(32);
  DequantizeRow(GgmlType::kQ4_0, out.data(), back.data(), 32);
  EXPECT_EQ(back[0], -8.0f);  // (0 - 8) * 1
  EXPECT_EQ(back[1], 7.0f);   // Clamped: (15 - 8) * 1
  EXPECT_EQ(back[16], 1.0f);
  EXPECT_EQ(back[21], -7.0f);
}

// Positive max: max = 4, d = -0.5 (f16 B800), id = -2.
TEST(Q4_0Test, HandComputedBlockPositiveMax) {
  std::vector<float> x(32, 0.0f);
  const float head[] = {4, -4, 1, -1, 0.25f, 0.3f, -3.9f, 2};
  std::copy(std::begin(head), std::end(head), x.begin());
  // x * -2 + 8.5: 4 -> 0.5 -> 0; -4 -> 16.5 -> 15; 1 -> 6.5 -> 6; -1 -> 10.5 -> 10;
  // 0.25 -> 8; 0.3 -> 7.9 -> 7; -3.9 -> 16.3 -> 15; 2 -> 4.5 -> 4; zeros -> 8.5 -> 8.
  const std::vector<uint8_t> expected = {0x00, 0xB8, 0x80, 0x8F, 0x86, 0x8A, 0x88, 0x87, 0x8F,
                                         0x84, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88};
  std::vector<uint8_t> out(18);
  QuantizeRow(GgmlType::kQ4_0, x.data(), out.data(), 32);
  EXPECT_THAT(out, ElementsAreArray(expected));
  std::vector<float> back(32);
  DequantizeRow(GgmlType::kQ4_0, out.data(), back.data(), 32);
  EXPECT_EQ(back[0], 4.0f);   // (0 - 8) * -0.5
  EXPECT_EQ(back[1], -3.5f);  // (15 - 8) * -0.5: the clamped end.
  EXPECT_EQ(back[2], 1.0f);
  EXPECT_EQ(back[8], -0.0f);
}

TEST(Q4_0Test, AllZeroBlock) {
  std::vector<float> x(32, 0.0f);
  std::vector<uint8_t> out(18);
  QuantizeRow(GgmlType::kQ4_0, x.data(), out.data(), 32);
  // max = 0, so d = 0 / -8 = -0.0: f16 0x8000, exactly as ggml stores it.
  EXPECT_EQ(out[0], 0x00);
  EXPECT_EQ(out[1], 0x80);
  for (int j = 2; j < 18; ++j) EXPECT_EQ(out[j], 0x88);  // id = 0: every q = trunc(8.5) = 8.
}

TEST(QuantTest, NonFiniteInputsStayDefined) {
  // ggml leaves these undefined; Duet only promises no UB and finite-input exactness.
  std::vector<float> x(32, 1.0f);
  x[3] = std::numeric_limits<float>::infinity();
  x[4] = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint8_t> q8(34), q4(18);
  QuantizeRow(GgmlType::kQ8_0, x.data(), q8.data(), 32);
  QuantizeRow(GgmlType::kQ4_0, x.data(), q4.data(), 32);
  SUCCEED();
}

std::vector<float> RandomRow(int n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

float BlockAmax(const std::vector<float>& x, int block) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[block * 32 + j]));
  return amax;
}

TEST(QuantTest, Q8_0RoundTripErrorBound) {
  const int n = 32 * 64;
  const std::vector<float> x = RandomRow(n, 1234, 0.7f);
  std::vector<uint8_t> q(GgmlRowBytes(GgmlType::kQ8_0, n));
  std::vector<float> y(n);
  QuantizeRow(GgmlType::kQ8_0, x.data(), q.data(), n);
  DequantizeRow(GgmlType::kQ8_0, q.data(), y.data(), n);
  for (int i = 0; i < n; ++i) {
    // Half a step of d = amax / 127, plus d's f16 rounding (relative 2^-11) times |q| <= 127.
    const float amax = BlockAmax(x, i / 32);
    ASSERT_LE(std::fabs(x[i] - y[i]), amax * (0.5f / 127 + 0x1p-11f) + 1e-7f) << i;
  }
}

TEST(QuantTest, Q4_0RoundTripErrorBound) {
  const int n = 32 * 64;
  const std::vector<float> x = RandomRow(n, 99, 2.0f);
  std::vector<uint8_t> q(GgmlRowBytes(GgmlType::kQ4_0, n));
  std::vector<float> y(n);
  QuantizeRow(GgmlType::kQ4_0, x.data(), q.data(), n);
  DequantizeRow(GgmlType::kQ4_0, q.data(), y.data(), n);
  double total_error = 0;
  for (int i = 0; i < n; ++i) {
    // |d| = amax / 8. Most values land within |d| / 2; the end opposite the max is clamped at
    // nibble 15, one full step short.
    const float amax = BlockAmax(x, i / 32);
    const float err = std::fabs(x[i] - y[i]);
    ASSERT_LE(err, amax / 8 * (1.0f + 0x1p-10f) + 1e-6f) << i;
    total_error += err;
  }
  EXPECT_LT(total_error / n, 0.2);  // Mean error well under a step (~0.3 for sigma 2).
}

TEST(QuantTest, F16AndBf16Rows) {
  const std::vector<float> x = {1.0f, -0.1f, 65504.0f, 1e-8f, 3.0f};
  std::vector<uint8_t> h(10), b(10);
  QuantizeRow(GgmlType::kF16, x.data(), h.data(), 5);
  QuantizeRow(GgmlType::kBF16, x.data(), b.data(), 5);
  EXPECT_EQ(h[0], 0x00);
  EXPECT_EQ(h[1], 0x3C);
  EXPECT_EQ(b[0], 0x80);
  EXPECT_EQ(b[1], 0x3F);
  std::vector<float> hy(5), by(5);
  DequantizeRow(GgmlType::kF16, h.data(), hy.data(), 5);
  DequantizeRow(GgmlType::kBF16, b.data(), by.data(), 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(hy[i], HalfToFloat(FloatToHalf(x[i])));
    EXPECT_EQ(by[i], Bf16ToFloat(FloatToBf16(x[i])));
  }
}

TEST(QuantTest, DotRowAccumulatesInDouble) {
  // Summed in float, 1e8 + 1 loses the 1; in double the result is exact.
  const std::vector<float> row = {1e8f, 1.0f, -1e8f};
  const std::vector<float> ones = {1.0f, 1.0f, 1.0f};
  EXPECT_EQ(DotRow(GgmlType::kF32, row.data(), ones.data(), 3), 1.0);
}

TEST(QuantTest, DotRowMatchesDequantizedDot) {
  const int n = 32 * 40;  // Spans several 256-element chunks plus a partial one.
  const std::vector<float> w = RandomRow(n, 7, 1.0f);
  const std::vector<float> x = RandomRow(n, 8, 1.0f);
  for (GgmlType type :
       {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_0}) {
    SCOPED_TRACE(GgmlTypeName(type));
    std::vector<uint8_t> q(GgmlRowBytes(type, n));
    QuantizeRow(type, w.data(), q.data(), n);
    std::vector<float> deq(n);
    DequantizeRow(type, q.data(), deq.data(), n);
    double expected = 0;
    for (int i = 0; i < n; ++i) expected += static_cast<double>(deq[i]) * x[i];
    EXPECT_EQ(DotRow(type, q.data(), x.data(), n), expected);
  }
}

}  // namespace
}  // namespace duet
