#include "common/kv/paged_kv.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "common/model/cpu_forward.h"
#include "common/model/fp8.h"
#include "common/model/quant.h"

namespace duet::kv {
namespace {

constexpr int64_t kLayers = 2;
constexpr int64_t kKvHeads = 2;
constexpr int64_t kHeads = 4;
constexpr int64_t kHeadDim = 8;

KvLayout SmallLayout(CacheDtype dtype) {
  KvLayout layout;
  layout.num_layers = kLayers;
  layout.num_kv_heads = kKvHeads;
  layout.head_dim = kHeadDim;
  layout.dtype = dtype;
  layout.num_blocks = 12;
  layout.num_tail_slots = dtype == CacheDtype::kFp8E4M3 ? 3 : 0;
  return layout;
}

std::vector<float> Random(int64_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

// A whole sequence's per-layer Q [L, heads, dim] and K, V [L, kv_heads, dim].
struct SequenceData {
  int64_t length = 0;
  std::vector<std::vector<float>> q, k, v;  // [layer]

  SequenceData(int64_t len, uint32_t seed) : length(len) {
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      const uint32_t s = seed * 100 + static_cast<uint32_t>(layer) * 3;
      q.push_back(Random(len * kHeads * kHeadDim, s));
      k.push_back(Random(len * kKvHeads * kHeadDim, s + 1, 2.0f));
      v.push_back(Random(len * kKvHeads * kHeadDim, s + 2));
    }
  }
};

// Feeds `data` through `cache` in steps of the given sizes (cycled), as an engine does, and
// returns the attention outputs [layer][L, heads, dim].
std::vector<std::vector<float>> RunSequence(PagedKvCache& cache, const SequenceData& data,
                                            const std::vector<int32_t>& block_table,
                                            int32_t tail_slot, const std::vector<int64_t>& steps) {
  std::vector<std::vector<float>> out(kLayers, std::vector<float>(data.q[0].size()));
  int64_t cached = 0;
  for (size_t i = 0; cached < data.length; ++i) {
    const int64_t n = std::min(steps[i % steps.size()], data.length - cached);
    const SequenceView seq{block_table, cached, tail_slot};
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      const float* k = data.k[layer].data() + cached * kKvHeads * kHeadDim;
      const float* v = data.v[layer].data() + cached * kKvHeads * kHeadDim;
      EXPECT_TRUE(cache.SealCompleted(layer, seq, k, v, n).ok());
      EXPECT_TRUE(cache
                      .Attention(layer, seq, data.q[layer].data() + cached * kHeads * kHeadDim,
                                 kHeads, k, v, n, out[layer].data() + cached * kHeads * kHeadDim)
                      .ok());
      EXPECT_TRUE(cache.Commit(layer, seq, k, v, n).ok());
    }
    cached += n;
  }
  return out;
}

// The tail entries that hold live positions (those of the partial last block of a sequence of
// `length` positions) are identical in both caches; the rest of a tail slot is stale.
void ExpectSameLiveTail(const PagedKvCache& a, const PagedKvCache& b, int32_t slot,
                        int64_t length) {
  const KvLayout& layout = a.layout();
  if (layout.num_tail_slots == 0) return;
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    for (KvPart part : {KvPart::kK, KvPart::kV}) {
      for (int64_t head = 0; head < kKvHeads; ++head) {
        const int64_t begin = layout.TailOffset(slot, layer, part, head, 0);
        const int64_t end = begin + (length % layout.block_size) * kHeadDim;
        EXPECT_TRUE(
            std::equal(a.tail().begin() + begin, a.tail().begin() + end, b.tail().begin() + begin))
            << "layer " << layer << " head " << head;
      }
    }
  }
}

class PagedKvDtypeTest : public ::testing::TestWithParam<CacheDtype> {};

// The cache's bytes and every attention output are identical whether a prompt arrives in one
// chunk, in uneven chunks, or token by token: a block's contents (and FP8 scale) depend on its
// own tokens only.
TEST_P(PagedKvDtypeTest, OrderIndependence) {
  const SequenceData data(70, 11);
  const std::vector<int32_t> table = {9, 2, 7, 0, 5};  // deliberately not in order
  const std::vector<std::vector<int64_t>> schedules = {{70}, {5, 16, 30, 19}, {1}, {17, 3}};
  std::vector<PagedKvCache> caches;
  std::vector<std::vector<std::vector<float>>> outputs;
  for (const auto& steps : schedules) {
    caches.push_back(*PagedKvCache::Create(SmallLayout(GetParam())));
    outputs.push_back(RunSequence(caches.back(), data, table, 1, steps));
  }
  for (size_t s = 1; s < schedules.size(); ++s) {
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      for (KvPart part : {KvPart::kK, KvPart::kV}) {
        const auto a = caches[0].data(layer, part);
        const auto b = caches[s].data(layer, part);
        EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << "schedule " << s;
        const auto sa = caches[0].scales(layer, part);
        const auto sb = caches[s].scales(layer, part);
        EXPECT_TRUE(std::equal(sa.begin(), sa.end(), sb.begin(), sb.end())) << "schedule " << s;
      }
      EXPECT_EQ(outputs[0][layer], outputs[s][layer]) << "schedule " << s << " layer " << layer;
    }
    ExpectSameLiveTail(caches[0], caches[s], 1, data.length);
  }
}

// Speculative positions that are rolled back (committed in part) leave the same cache as if
// they had never been written, once the sequence continues.
TEST_P(PagedKvDtypeTest, RollbackIsCommittingFewer) {
  const SequenceData data(40, 12);
  const SequenceData junk(40, 13);
  const std::vector<int32_t> table = {3, 4, 1};
  PagedKvCache clean = *PagedKvCache::Create(SmallLayout(GetParam()));
  PagedKvCache spec = *PagedKvCache::Create(SmallLayout(GetParam()));
  const auto expected = RunSequence(clean, data, table, 0, {14, 1, 1, 1, 1, 1, 1, 1, 19});

  // Same prefix, then at 14 a 5-position speculative step (crossing a block) of which only the
  // first position is accepted, repeated with growing acceptance.
  RunSequence(spec, SequenceData(14, 12), table, 0, {14});
  int64_t cached = 14;
  const int64_t dim = kKvHeads * kHeadDim;
  for (int64_t accepted : {1, 2, 4}) {
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      // Pending: the true next `accepted` rows followed by junk.
      std::vector<float> k(5 * dim), v(5 * dim), q(5 * kHeads * kHeadDim), o(q.size());
      for (int64_t i = 0; i < 5; ++i) {
        const auto& src = i < accepted ? data : junk;
        std::copy_n(src.k[layer].begin() + (cached + i) * dim, dim, k.begin() + i * dim);
        std::copy_n(src.v[layer].begin() + (cached + i) * dim, dim, v.begin() + i * dim);
      }
      std::copy_n(data.q[layer].begin() + cached * kHeads * kHeadDim, q.size(), q.begin());
      const SequenceView seq{table, cached, 0};
      ASSERT_TRUE(spec.SealCompleted(layer, seq, k.data(), v.data(), 5).ok());
      ASSERT_TRUE(
          spec.Attention(layer, seq, q.data(), kHeads, k.data(), v.data(), 5, o.data()).ok());
      // Accepted queries saw exactly what the clean run saw.
      for (int64_t i = 0; i < accepted * kHeads * kHeadDim; ++i) {
        ASSERT_EQ(o[i], expected[layer][cached * kHeads * kHeadDim + i]) << i;
      }
      ASSERT_TRUE(spec.Commit(layer, seq, k.data(), v.data(), accepted).ok());
    }
    cached += accepted;
  }
  ASSERT_EQ(cached, 21);
  // Continue to the end; everything matches the clean run.
  SequenceData rest(40, 12);
  std::vector<std::vector<float>> tail_out(kLayers);
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    const SequenceView seq{table, cached, 0};
    const float* k = rest.k[layer].data() + cached * dim;
    const float* v = rest.v[layer].data() + cached * dim;
    std::vector<float> o(19 * kHeads * kHeadDim);
    ASSERT_TRUE(spec.SealCompleted(layer, seq, k, v, 19).ok());
    ASSERT_TRUE(spec.Attention(layer, seq, rest.q[layer].data() + cached * kHeads * kHeadDim,
                               kHeads, k, v, 19, o.data())
                    .ok());
    ASSERT_TRUE(spec.Commit(layer, seq, k, v, 19).ok());
    EXPECT_TRUE(
        std::equal(o.begin(), o.end(), expected[layer].begin() + cached * kHeads * kHeadDim));
    for (KvPart part : {KvPart::kK, KvPart::kV}) {
      const auto a = clean.data(layer, part);
      const auto b = spec.data(layer, part);
      EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
  }
  ExpectSameLiveTail(clean, spec, 0, 40);
}

// What queries read back is the stored value: exact for F32, f16-rounded for F16 and for FP8
// keys in the query's own block, and within half an E4M3 step of the f16 value for sealed FP8.
TEST_P(PagedKvDtypeTest, ReadBackMatchesStoredPrecision) {
  const SequenceData data(37, 14);
  const std::vector<int32_t> table = {6, 8, 10};
  PagedKvCache cache = *PagedKvCache::Create(SmallLayout(GetParam()));
  RunSequence(cache, data, table, 2, {37});
  const SequenceView seq{table, 37, 2};
  const int64_t dim = kKvHeads * kHeadDim;
  std::vector<float> k(dim), v(dim);
  for (int64_t query : {0, 20, 36}) {
    // Own-block keys of earlier blocks are gone from the tail once their block is sealed.
    const int64_t last_key = query / 16 == 36 / 16 ? query : query / 16 * 16 - 1;
    for (int64_t key = 0; key <= last_key; ++key) {
      cache.KeyValueFor(0, seq, nullptr, nullptr, query, key, k.data(), v.data());
      for (int64_t e = 0; e < dim; ++e) {
        const float x = data.k[0][key * dim + e];
        const float h = HalfToFloat(FloatToHalf(x));
        if (GetParam() == CacheDtype::kF32) {
          ASSERT_EQ(k[e], x);
        } else if (GetParam() == CacheDtype::kF16 || key / 16 == query / 16) {
          ASSERT_EQ(k[e], h);
        } else {
          const float scale =
              cache.scales(0, KvPart::kK)[table[key / 16] * kKvHeads + e / kHeadDim];
          ASSERT_LE(std::fabs(k[e] - h),
                    std::max(std::fabs(h) * 0x1p-4f, scale * 0x1p-10f) * 1.001f)
              << "query " << query << " key " << key;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, PagedKvDtypeTest,
                         ::testing::Values(CacheDtype::kF32, CacheDtype::kF16,
                                           CacheDtype::kFp8E4M3),
                         [](const ::testing::TestParamInfo<CacheDtype>& param_info) {
                           return std::string(CacheDtypeName(param_info.param));
                         });

// F32 attention over the paged store is cpu_ref::Attention over the contiguous K/V.
TEST(PagedKvTest, F32MatchesContiguousReference) {
  const SequenceData data(45, 15);
  const std::vector<int32_t> table = {11, 0, 3};
  PagedKvCache cache = *PagedKvCache::Create(SmallLayout(CacheDtype::kF32));
  const auto out = RunSequence(cache, data, table, -1, {7, 20});
  std::vector<float> expected(kHeads * kHeadDim);
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    for (int64_t p = 0; p < 45; ++p) {
      cpu_ref::Attention(data.q[layer].data() + p * kHeads * kHeadDim, data.k[layer].data(),
                         data.v[layer].data(), p + 1, kHeads, kKvHeads, kHeadDim, expected.data());
      for (int64_t e = 0; e < kHeads * kHeadDim; ++e) {
        ASSERT_EQ(out[layer][p * kHeads * kHeadDim + e], expected[e]) << p;
      }
    }
  }
}

// FP8's quantization error in attention outputs stays small. Over 200 positions with K ~ N(0, 2)
// (fairly peaked attention at head_dim 8) and V ~ N(0, 1): mean |out_fp8 - out_f32| <= 0.02
// and max <= 0.3 (E4M3 keeps 3 mantissa bits: ~3.6% RMS error per element).
TEST(PagedKvTest, Fp8AttentionStaysCloseToF32) {
  const SequenceData data(200, 16);
  const std::vector<int32_t> table = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  KvLayout f32_layout = SmallLayout(CacheDtype::kF32);
  KvLayout fp8_layout = SmallLayout(CacheDtype::kFp8E4M3);
  f32_layout.num_blocks = fp8_layout.num_blocks = 13;
  PagedKvCache f32 = *PagedKvCache::Create(f32_layout);
  PagedKvCache fp8 = *PagedKvCache::Create(fp8_layout);
  const auto exact = RunSequence(f32, data, table, 0, {150, 1});
  const auto quantized = RunSequence(fp8, data, table, 0, {150, 1});
  double max_error = 0.0;
  double sum_error = 0.0;
  int64_t count = 0;
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    for (size_t i = 0; i < exact[layer].size(); ++i) {
      const double error = std::fabs(exact[layer][i] - quantized[layer][i]);
      max_error = std::max(max_error, error);
      sum_error += error;
      ++count;
    }
  }
  const double mean_error = sum_error / static_cast<double>(count);
  EXPECT_LE(mean_error, 0.02) << "max " << max_error;
  EXPECT_LE(max_error, 0.3) << "mean " << mean_error;
  EXPECT_GT(max_error, 0.0);
  std::printf("fp8 vs f32 attention: mean |error| %.4f, max %.4f\n", mean_error, max_error);
}

TEST(PagedKvTest, SealQuantizesEachBlockHeadWithItsOwnScale) {
  PagedKvCache cache = *PagedKvCache::Create(SmallLayout(CacheDtype::kFp8E4M3));
  const std::vector<int32_t> table = {4, 5};
  std::vector<float> k = Random(20 * kKvHeads * kHeadDim, 3);
  const std::vector<float> v = Random(20 * kKvHeads * kHeadDim, 4);
  k[0] = 1000.0f;  // position 0, head 0: sets that tile's scale only
  ASSERT_TRUE(cache.SealCompleted(0, {table, 0, 0}, k.data(), v.data(), 20).ok());
  const auto scales = cache.scales(0, KvPart::kK);
  EXPECT_EQ(scales[4 * kKvHeads + 0], HalfToFloat(FloatToHalf(1000.0f)) / 448.0f);
  EXPECT_LT(scales[4 * kKvHeads + 1], 0.1f);
  EXPECT_EQ(scales[5 * kKvHeads + 0], 1.0f);  // block 1 (positions 16..) is not complete
  EXPECT_EQ(cache.data(0, KvPart::kK)[cache.layout().PoolOffset(4, 0, 0)], kFp8E4M3MaxCode);
}

TEST(PagedKvTest, RejectsBadArguments) {
  PagedKvCache cache = *PagedKvCache::Create(SmallLayout(CacheDtype::kFp8E4M3));
  const std::vector<float> kv(40 * kKvHeads * kHeadDim);
  std::vector<float> q(40 * kHeads * kHeadDim), out(q.size());
  const std::vector<int32_t> table = {0, 1};
  EXPECT_EQ(cache.SealCompleted(0, {table, 0, 0}, kv.data(), kv.data(), 33).code(),
            absl::StatusCode::kInvalidArgument);  // table covers 32 positions
  EXPECT_FALSE(cache.SealCompleted(2, {table, 0, 0}, kv.data(), kv.data(), 3).ok());  // layer
  EXPECT_FALSE(cache.Commit(0, {table, 0, 3}, kv.data(), kv.data(), 3).ok());         // tail slot
  const std::vector<int32_t> bad = {0, 12};
  EXPECT_FALSE(cache.Commit(0, {bad, 0, 0}, kv.data(), kv.data(), 20).ok());  // block id
  EXPECT_FALSE(
      cache.Attention(0, {table, 0, 0}, q.data(), 3, kv.data(), kv.data(), 3, out.data()).ok());
}

}  // namespace
}  // namespace duet::kv
