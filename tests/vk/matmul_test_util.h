// Shared by the matrix-kernel tests (matmul_test.cc, matmul_fused_test.cc): random weights in
// their GGUF encoding, activations with NaN padding, the tolerance per type, and the launch
// configurations every test runs.
#ifndef DUET_TESTS_VK_MATMUL_TEST_UTIL_H_
#define DUET_TESTS_VK_MATMUL_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <vector>

#include "common/model/ggml_types.h"
#include "common/vk/device.h"
#include "common/vk/ops_matmul.h"

namespace duet::vk::testing {

// Tolerance relative to a row's scale S = sum_c |w[r, c] * x[t, c]| (see matmul_test.cc).
double RelTol(GgmlType type);

// A weight in its GGUF encoding plus its dequantized copy for the reference scale.
struct HostWeight {
  std::vector<uint8_t> bytes;  // MatMulWeightBytes, padding filled with 0xff (NaN patterns)
  std::vector<float> values;   // [rows, cols] dequantized
  int64_t row_bytes = 0;
};

// Random values in [-1, 1] quantized to `type`. row_stride: bytes between rows (0 = packed);
// the gaps are 0xff too.
HostWeight MakeWeight(std::mt19937& rng, GgmlType type, int64_t rows, int64_t cols,
                      int64_t row_stride = 0);

// x: [n, stride] f32 with NaN between rows (stride > cols) and in the padding after the end.
std::vector<float> MakeActivations(std::mt19937& rng, int64_t n, int64_t stride, int64_t cols);

// The configuration this device gets, and the other family, so that both code paths of each
// shader (row per lane vs rows split across lanes; direct reads vs shared-memory tiles) run on
// whatever device the tests have, plus odd sub-tiles and rows per lane.
std::vector<MatMulConfig> Configs(const Device& device);

}  // namespace duet::vk::testing

#endif  // DUET_TESTS_VK_MATMUL_TEST_UTIL_H_
