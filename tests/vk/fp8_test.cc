// shaders/include/fp8.glsl must be bit-identical to common/model/fp8.h: every code decodes to
// the same f32, and a sweep of f32 inputs (every code's value, the midpoints between
// neighbouring codes (ties), their neighbours one ulp away, subnormals, saturation, inf, NaN,
// random values) encodes to the same code.
#include "common/model/fp8.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>

#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

struct CodecPush {
  uint32_t n;
};
DUET_VK_PUSH_CONSTANTS(CodecPush);

class Fp8Test : public testing::VkTest {};

TEST_F(Fp8Test, ShaderCodecIsBitIdenticalToCpu) {
  std::vector<float> values;
  for (int code = 0; code < 256; ++code) {
    const float v = Fp8E4M3ToFloat(static_cast<uint8_t>(code));
    if (std::isnan(v)) continue;
    values.push_back(v);
    values.push_back(std::nextafter(v, 1000.0f));
    values.push_back(std::nextafter(v, -1000.0f));
    if ((code & 0x7f) < 0x7e) {
      const float next = Fp8E4M3ToFloat(static_cast<uint8_t>(code + 1));
      const float mid = (v + next) / 2;  // exact: neighbours differ in few bits
      values.push_back(mid);
      values.push_back(std::nextafter(mid, 1000.0f));
      values.push_back(std::nextafter(mid, -1000.0f));
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {0.0f, -0.0f, 448.0f, 449.0f, 464.0f, 465.0f, 1e30f, inf, -inf,
                  std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                  std::numeric_limits<float>::denorm_min(), 1e-40f, 0x1p-10f, 0x1p-14f, 0x1.8p-15f,
                  0x1p-15f, 0x1.2p-10f}) {
    values.push_back(v);
    values.push_back(-v);
  }
  std::mt19937 rng(testing::TestSeed());
  for (float v : testing::RandomFloats(rng, 20000, -500.0f, 500.0f)) values.push_back(v);
  for (float v : testing::RandomFloats(rng, 20000, -0.05f, 0.05f)) values.push_back(v);
  while (values.size() % 256 != 0) values.push_back(0.0f);  // decoded[] covers every code
  const uint32_t n = static_cast<uint32_t>(values.size());

  Buffer in = testing::Upload(device(), values);
  Buffer codes = testing::PoisonedBuffer(device(), n * 4);
  Buffer decoded = testing::PoisonedBuffer(device(), n * 4);
  const Pipeline* codec = *kernels().Get<CodecPush>(KernelId::kFp8Codec);
  ASSERT_TRUE(cl().Dispatch(*codec, {in.view(), codes.view(), decoded.view()}, CodecPush{n},
                            Groups1D((n + 63) / 64))
                  .ok());
  ASSERT_TRUE(cl().Submit().ok());
  const std::vector<uint32_t> got_codes = testing::Download<uint32_t>(device(), codes.view());
  const std::vector<float> got_decoded = testing::Download<float>(device(), decoded.view());
  int bad = 0;
  for (uint32_t i = 0; i < n && bad < 10; ++i) {
    const uint8_t want = FloatToFp8E4M3(values[i]);
    if (got_codes[i] != want) {
      ADD_FAILURE() << "encode " << values[i] << " (0x" << std::hex
                    << std::bit_cast<uint32_t>(values[i]) << "): shader 0x" << got_codes[i]
                    << ", cpu 0x" << static_cast<int>(want);
      ++bad;
    }
  }
  for (int code = 0; code < 256; ++code) {
    const float want = Fp8E4M3ToFloat(static_cast<uint8_t>(code));
    const float got = got_decoded[static_cast<size_t>(code)];
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << code;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << "code " << code;
    }
  }
}

}  // namespace
}  // namespace duet::vk
