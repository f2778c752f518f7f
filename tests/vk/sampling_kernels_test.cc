// argmax.comp and topk.comp against the CPU: duet::ArgMax (common/model/sampling.h) and a sort
// by (value descending, id ascending) with NaN left out. Both are exact (ids and values), on
// rows with ties, NaN, -inf, all-NaN rows and vocab sizes that are not multiples of anything.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/model/sampling.h"
#include "common/vk/ops_attention.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using testing::Download;
using testing::PoisonedBuffer;
using testing::Upload;

constexpr float kInf = std::numeric_limits<float>::infinity();

class SamplingKernelsTest : public testing::VkTest {
 protected:
  // rows x vocab logits with the awkward cases mixed in: row 0 random, row 1 with its maximum
  // repeated, row 2 with NaN everywhere but a few values, row 3 all NaN, row 4 all -inf, row 5
  // coarse values (many ties), further rows random.
  std::vector<float> MakeLogits(int64_t rows, int64_t vocab) {
    std::uniform_real_distribution<float> dist(-10.0f, 10.0f);
    std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
    std::vector<float> x(static_cast<size_t>(rows * vocab));
    for (float& v : x) v = dist(rng_);
    auto row = [&](int64_t r) { return x.data() + r * vocab; };
    if (rows > 1) {
      for (int i = 0; i < 3; ++i) row(1)[pick(rng_)] = 50.0f;
    }
    if (rows > 2) {
      for (int64_t i = 0; i < vocab; ++i) {
        if (i % 5 != 3) row(2)[i] = std::nanf("");
      }
      row(2)[0] = std::nanf("");
    }
    if (rows > 3) std::fill(row(3), row(3) + vocab, std::nanf(""));
    if (rows > 4) std::fill(row(4), row(4) + vocab, -kInf);
    if (rows > 5) {
      for (int64_t i = 0; i < vocab; ++i) row(5)[i] = std::floor(row(5)[i] / 4.0f);
      row(5)[pick(rng_)] = -0.0f;
    }
    return x;
  }

  std::mt19937 rng_{testing::TestSeed()};
};

TEST_F(SamplingKernelsTest, ArgmaxMatchesCpu) {
  for (int64_t vocab : {1, 7, 1000, 32003}) {
    const int64_t rows = 8;
    const std::vector<float> logits = MakeLogits(rows, vocab);
    Buffer in = Upload(device(), logits);
    Buffer ids = PoisonedBuffer(device(), rows * 4);
    ASSERT_TRUE(RecordArgmax(cl(), kernels(), in.view(), rows, vocab, ids.view()).ok());
    ASSERT_TRUE(cl().Submit().ok());
    const std::vector<int32_t> got = Download<int32_t>(device(), ids.view());
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t want = ArgMax(absl::MakeConstSpan(logits).subspan(
          static_cast<size_t>(r * vocab), static_cast<size_t>(vocab)));
      EXPECT_EQ(got[static_cast<size_t>(r)], want) << "vocab " << vocab << " row " << r;
    }
  }
}

TEST_F(SamplingKernelsTest, TopKMatchesCpu) {
  for (int64_t vocab : {5, 1000, 32003}) {
    for (int64_t k : {1, 8, 40, 64}) {
      const int64_t rows = 7;
      const std::vector<float> logits = MakeLogits(rows, vocab);
      Buffer in = Upload(device(), logits);
      Buffer values = PoisonedBuffer(device(), rows * k * 4);
      Buffer ids = PoisonedBuffer(device(), rows * k * 4);
      ASSERT_TRUE(
          RecordTopK(cl(), kernels(), in.view(), rows, vocab, k, values.view(), ids.view()).ok());
      ASSERT_TRUE(cl().Submit().ok());
      const std::vector<float> got_values = Download<float>(device(), values.view());
      const std::vector<int32_t> got_ids = Download<int32_t>(device(), ids.view());
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = logits.data() + r * vocab;
        std::vector<int32_t> order;
        for (int32_t i = 0; i < vocab; ++i) {
          if (!std::isnan(row[i])) order.push_back(i);
        }
        std::stable_sort(order.begin(), order.end(),
                         [&](int32_t a, int32_t b) { return row[a] > row[b]; });
        for (int64_t j = 0; j < k; ++j) {
          const size_t at = static_cast<size_t>(r * k + j);
          if (j < static_cast<int64_t>(order.size())) {
            ASSERT_EQ(got_ids[at], order[static_cast<size_t>(j)])
                << "vocab " << vocab << " k " << k << " row " << r << " rank " << j;
            ASSERT_EQ(got_values[at], row[order[static_cast<size_t>(j)]]);
          } else {
            ASSERT_EQ(got_ids[at], -1) << "vocab " << vocab << " k " << k << " row " << r;
            ASSERT_EQ(got_values[at], -kInf);
          }
        }
      }
    }
  }
}

TEST_F(SamplingKernelsTest, RejectsBadArguments) {
  Buffer b = PoisonedBuffer(device(), 4096);
  EXPECT_FALSE(RecordTopK(cl(), kernels(), b.view(), 1, 10, 65, b.view(), b.view()).ok());
  EXPECT_FALSE(RecordTopK(cl(), kernels(), b.view(), 1, 10, 0, b.view(), b.view()).ok());
  EXPECT_FALSE(RecordArgmax(cl(), kernels(), b.view(), 2, 1000, b.view()).ok());  // 8000 bytes
  EXPECT_EQ(cl().num_recorded(), 0);
}

}  // namespace
}  // namespace duet::vk
