// The KV wire payload (common/kv/kv_payload.h) on the CPU store, no Vulkan: byte sizes,
// rectangle validation, export -> import round trips into a different pool (other block ids,
// other tail slot) that continue bit-identically, and corrupt payloads rejected with nothing
// written.
#include "common/kv/kv_payload.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/kv/paged_kv.h"

namespace duet::kv {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kLayers = 3;
constexpr int64_t kKvHeads = 2;
constexpr int64_t kHeads = 4;
constexpr int64_t kHeadDim = 8;
constexpr int64_t kBlockSize = 16;

KvLayout Layout(CacheDtype dtype, int64_t num_blocks, int64_t tail_slots) {
  KvLayout layout;
  layout.num_layers = kLayers;
  layout.num_kv_heads = kKvHeads;
  layout.head_dim = kHeadDim;
  layout.block_size = kBlockSize;
  layout.dtype = dtype;
  layout.num_blocks = num_blocks;
  layout.num_tail_slots = dtype == CacheDtype::kFp8E4M3 ? tail_slots : 0;
  return layout;
}

std::vector<float> Random(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

// One model step over every layer, as an engine runs it: n positions after num_cached, K/V
// and Q drawn from `seed`. Returns the attention outputs [layer][n, heads, dim].
std::vector<std::vector<float>> Step(PagedKvCache& cache, const std::vector<int32_t>& table,
                                     int32_t tail_slot, int64_t num_cached, int64_t n,
                                     uint32_t seed) {
  std::vector<std::vector<float>> out;
  const SequenceView seq{table, num_cached, tail_slot};
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    const uint32_t s = seed * 31 + static_cast<uint32_t>(layer) * 7;
    const std::vector<float> k = Random(n * kKvHeads * kHeadDim, s);
    const std::vector<float> v = Random(n * kKvHeads * kHeadDim, s + 1);
    const std::vector<float> q = Random(n * kHeads * kHeadDim, s + 2);
    std::vector<float> o(q.size());
    EXPECT_TRUE(cache.SealCompleted(layer, seq, k.data(), v.data(), n).ok());
    EXPECT_TRUE(
        cache.Attention(layer, seq, q.data(), kHeads, k.data(), v.data(), n, o.data()).ok());
    EXPECT_TRUE(cache.Commit(layer, seq, k.data(), v.data(), n).ok());
    out.push_back(std::move(o));
  }
  return out;
}

TEST(KvPayloadTest, CellAndPayloadBytes) {
  const KvLayout f32 = Layout(CacheDtype::kF32, 8, 0);
  const KvLayout f16 = Layout(CacheDtype::kF16, 8, 0);
  const KvLayout fp8 = Layout(CacheDtype::kFp8E4M3, 8, 2);
  // [2 heads][16][8]: 256 elements.
  EXPECT_EQ(KvCellBytes(f32, 37, 0), 1024);
  EXPECT_EQ(KvCellBytes(f32, 37, 2), 1024);  // partial: same size, zero-padded
  EXPECT_EQ(KvCellBytes(f16, 37, 2), 512);
  EXPECT_EQ(KvCellBytes(fp8, 37, 1), 256 + 2 * 4);  // E4M3 bytes + 2 scales
  EXPECT_EQ(KvCellBytes(fp8, 37, 2), 512);          // partial: the f16 tail
  EXPECT_EQ(KvCellBytes(fp8, 32, 1), 264);          // 32 positions: block 1 is full
  EXPECT_EQ(NumBlocksFor(fp8, 37), 3);
  EXPECT_EQ(NumBlocksFor(fp8, 32), 2);
  // 3 layers x (K, V) x (264 + 264 + 512).
  EXPECT_EQ(KvPayloadBytes(fp8, 37, FullRect(fp8, 37)), 3 * 2 * 1040);
  EXPECT_EQ(KvPayloadBytes(fp8, 37, 1, 2, 2, 3), 2 * 512);
  EXPECT_EQ(KvPayloadBytes(f16, 37, 0, 2, 1, 3), 2 * 2 * 2 * 512);
  // FP8 full blocks stay within 0.53x of F16 on the wire.
  EXPECT_LE(static_cast<double>(KvPayloadBytes(fp8, 32, FullRect(fp8, 32))),
            kMaxFp8BytesRatio * static_cast<double>(KvPayloadBytes(f16, 32, FullRect(f16, 32))));

  const std::vector<int32_t> table = {5, 1, 6};
  const std::vector<KvCell> cells = PayloadCells(fp8, 37, KvRect{1, 3, 1, 3}, table);
  ASSERT_EQ(cells.size(), 2u * 2u * 2u);
  EXPECT_EQ(cells[0].layer, 1);
  EXPECT_EQ(cells[0].block_id, 1);
  EXPECT_EQ(cells[0].source, KvCellSource::kPoolFp8);
  EXPECT_EQ(cells[1].source, KvCellSource::kTailSlot);
  EXPECT_EQ(cells[1].num_valid_slots, 5);
  EXPECT_EQ(cells[2].part, KvPart::kV);
  EXPECT_EQ(cells[2].payload_offset, 264 + 512);
  EXPECT_EQ(cells.back().payload_offset + cells.back().bytes,
            KvPayloadBytes(fp8, 37, KvRect{1, 3, 1, 3}));
}

TEST(KvPayloadTest, BadRectanglesNameTheBound) {
  const KvLayout layout = Layout(CacheDtype::kFp8E4M3, 8, 2);
  struct Bad {
    int64_t num_tokens;
    KvRect rect;
    const char* message;
  };
  const Bad bad[] = {
      {0, {0, 1, 0, 1}, "num_tokens 0 must be >= 1"},
      {37, {-1, 1, 0, 1}, "layer_begin -1 outside [0, 3)"},
      {37, {3, 4, 0, 1}, "layer_begin 3 outside [0, 3)"},
      {37, {1, 1, 0, 1}, "layer_end 1 outside [2, 3]"},
      {37, {0, 4, 0, 1}, "layer_end 4 outside [1, 3]"},
      {37, {0, 1, -1, 1}, "block_begin -1 outside [0, 3)"},
      {37, {0, 1, 3, 4}, "block_begin 3 outside [0, 3)"},
      {37, {0, 1, 0, 4}, "block_end 4 outside [1, 3] (37 tokens in blocks of 16)"},
      {32, {0, 1, 1, 1}, "block_end 1 outside [2, 2]"},
  };
  for (const Bad& b : bad) {
    const absl::Status status = ValidateRect(layout, b.num_tokens, b.rect);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << b.message;
    EXPECT_THAT(std::string(status.message()), HasSubstr(b.message));
  }
  EXPECT_TRUE(ValidateRect(layout, 37, FullRect(layout, 37)).ok());

  const std::vector<int32_t> table = {5, 1, 6};
  const KvRect all = FullRect(layout, 37);
  EXPECT_THAT(std::string(ValidateRectTarget(layout, 37, all, {5, 1}, 0).message()),
              HasSubstr("the block table has 2 blocks; blocks [0, 3) need 3"));
  EXPECT_THAT(std::string(ValidateRectTarget(layout, 37, all, {5, 8, 6}, 0).message()),
              HasSubstr("block table entry 1 = 8 is outside the pool [0, 8)"));
  EXPECT_THAT(std::string(ValidateRectTarget(layout, 37, all, table, 2).message()),
              HasSubstr("tail slot 2 is outside [0, 2)"));
  // The tail slot matters only when the rectangle holds the partial block.
  EXPECT_TRUE(ValidateRectTarget(layout, 37, KvRect{0, 3, 0, 2}, table, -1).ok());
  EXPECT_TRUE(ValidateRectTarget(layout, 32, FullRect(layout, 32), table, -1).ok());
  EXPECT_TRUE(ValidateRectTarget(layout, 37, all, table, 1).ok());
}

class KvPayloadDtypeTest : public ::testing::TestWithParam<CacheDtype> {};

std::string DtypeName(const ::testing::TestParamInfo<CacheDtype>& param) {
  return std::string(CacheDtypeName(param.param));
}

// Exports the whole of `table`'s num_tokens positions.
std::vector<uint8_t> ExportAll(const PagedKvCache& cache, const std::vector<int32_t>& table,
                               int32_t tail_slot, int64_t num_tokens) {
  absl::StatusOr<std::vector<uint8_t>> payload =
      ExportRect(cache, table, tail_slot, num_tokens, FullRect(cache.layout(), num_tokens));
  EXPECT_TRUE(payload.ok()) << payload.status();
  return payload.ok() ? *payload : std::vector<uint8_t>{};
}

// Round trip into another pool, in pieces (per layer, split block ranges, out of order): the
// importer re-exports the same bytes and then continues exactly as the exporter does.
TEST_P(KvPayloadDtypeTest, RoundTripContinuesBitIdentically) {
  for (int64_t num_tokens : {37, 32}) {
    SCOPED_TRACE(testing::Message() << num_tokens << " tokens");
    PagedKvCache a = *PagedKvCache::Create(Layout(GetParam(), 10, 3));
    PagedKvCache b = *PagedKvCache::Create(Layout(GetParam(), 7, 2));
    const std::vector<int32_t> table_a = {8, 2, 5, 9};
    const std::vector<int32_t> table_b = {0, 6, 3, 1};
    // A stale sequence leaves garbage in the blocks and tail slot B will use.
    Step(b, {3, 1, 6}, 1, 0, 45, 99);
    Step(a, table_a, 2, 0, 20, 1);
    Step(a, table_a, 2, 20, num_tokens - 20, 2);

    const int64_t blocks = NumBlocksFor(a.layout(), num_tokens);
    const std::vector<KvRect> pieces = {
        {2, 3, 0, blocks}, {0, 1, 1, blocks}, {1, 2, 0, blocks}, {0, 1, 0, 1}};
    for (const KvRect& rect : pieces) {
      absl::StatusOr<std::vector<uint8_t>> payload = ExportRect(a, table_a, 2, num_tokens, rect);
      ASSERT_TRUE(payload.ok()) << payload.status();
      EXPECT_EQ(static_cast<int64_t>(payload->size()),
                KvPayloadBytes(a.layout(), num_tokens, rect));
      ASSERT_TRUE(ImportRect(&b, table_b, 1, num_tokens, rect, *payload).ok());
    }
    const std::vector<uint8_t> from_a = ExportAll(a, table_a, 2, num_tokens);
    EXPECT_EQ(ExportAll(b, table_b, 1, num_tokens), from_a);
    // Per-layer payloads concatenate to the full one (layers are outermost).
    std::vector<uint8_t> concatenated;
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      absl::StatusOr<std::vector<uint8_t>> part =
          ExportRect(a, table_a, 2, num_tokens, KvRect{layer, layer + 1, 0, blocks});
      ASSERT_TRUE(part.ok());
      concatenated.insert(concatenated.end(), part->begin(), part->end());
    }
    EXPECT_EQ(concatenated, from_a);

    // Both continue with the same tokens: the same attention outputs, bit for bit, across a
    // block boundary (FP8 seals the block that was partial on the wire).
    for (uint32_t step = 0; step < 3; ++step) {
      const int64_t cached = num_tokens + 6 * step;
      EXPECT_EQ(Step(a, table_a, 2, cached, 6, 10 + step),
                Step(b, table_b, 1, cached, 6, 10 + step))
          << "step " << step;
    }
    EXPECT_EQ(ExportAll(a, table_a, 2, num_tokens + 18), ExportAll(b, table_b, 1, num_tokens + 18));
  }
}

// Slots past num_tokens go out as zeros whatever the pool holds there.
TEST_P(KvPayloadDtypeTest, UncommittedSlotsAreZeroOnTheWire) {
  PagedKvCache clean = *PagedKvCache::Create(Layout(GetParam(), 6, 2));
  PagedKvCache dirty = *PagedKvCache::Create(Layout(GetParam(), 6, 2));
  const std::vector<int32_t> table = {4, 0, 3};
  Step(dirty, table, 0, 0, 47, 5);  // 47 positions of something else first
  Step(clean, table, 0, 0, 37, 6);
  Step(dirty, table, 0, 0, 37, 6);
  const std::vector<uint8_t> payload = ExportAll(dirty, table, 0, 37);
  EXPECT_EQ(payload, ExportAll(clean, table, 0, 37));
  // The last cell of the payload is V of the last layer's partial block: slots 5.. are zero.
  const int64_t cell = KvCellBytes(dirty.layout(), 37, 2);
  const int64_t slot_bytes = cell / (kKvHeads * kBlockSize);
  ASSERT_GE(static_cast<int64_t>(payload.size()), cell);
  const uint8_t* last = payload.data() + payload.size() - static_cast<size_t>(cell);
  for (int64_t i = 5 * slot_bytes; i < kBlockSize * slot_bytes; ++i) {
    ASSERT_EQ(last[i], 0) << "byte " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, KvPayloadDtypeTest,
                         ::testing::Values(CacheDtype::kF32, CacheDtype::kF16,
                                           CacheDtype::kFp8E4M3),
                         DtypeName);

// Corrupt or mismatched payloads are INVALID_ARGUMENT and leave the pool as it was.
TEST(KvPayloadTest, CorruptPayloadsAreRejectedAndWriteNothing) {
  const KvLayout layout = Layout(CacheDtype::kFp8E4M3, 6, 2);
  PagedKvCache a = *PagedKvCache::Create(layout);
  PagedKvCache b = *PagedKvCache::Create(layout);
  const std::vector<int32_t> table = {1, 2, 3};
  Step(a, table, 0, 0, 37, 7);
  Step(b, table, 1, 0, 21, 8);  // b holds another sequence in the same blocks
  const std::vector<uint8_t> good = ExportAll(a, table, 0, 37);
  const std::vector<uint8_t> before = ExportAll(b, table, 1, 21);
  const KvRect all = FullRect(layout, 37);

  auto expect_rejected = [&](const std::vector<uint8_t>& payload, const KvRect& rect,
                             const std::string& message) {
    const absl::Status status = ImportRect(&b, table, 1, 37, rect, payload);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_THAT(std::string(status.message()), HasSubstr(message));
    EXPECT_EQ(ExportAll(b, table, 1, 21), before) << message;
  };
  std::vector<uint8_t> shorter(good.begin(), good.end() - 1);
  expect_rejected(shorter, all,
                  "6239 bytes, but layers [0, 3) x blocks [0, 3) of 37 tokens take 6240");
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  expect_rejected(longer, all, "6241 bytes");
  expect_rejected(good, KvRect{0, 3, 0, 4}, "block_end 4 outside [1, 3]");
  expect_rejected(good, KvRect{0, 4, 0, 3}, "layer_end 4 outside [1, 3]");

  // A nonzero byte past the 5 committed positions of the partial block (layer 0 K, block 2).
  const std::vector<KvCell> cells = PayloadCells(layout, 37, all, table);
  std::vector<uint8_t> tail_junk = good;
  tail_junk[static_cast<size_t>(cells[2].payload_offset + 6 * kHeadDim * 2)] = 1;
  expect_rejected(tail_junk, all, "layer 0 K block 2 head 0 has nonzero data in slot 6");
  // Scales of a sealed block (layer 1 V block 0, head 1) that no quantizer writes.
  const KvCell& sealed = cells[9];
  ASSERT_EQ(sealed.source, KvCellSource::kPoolFp8);
  for (float scale : {0.0f, -1.0f, std::numeric_limits<float>::infinity(),
                      std::numeric_limits<float>::quiet_NaN()}) {
    std::vector<uint8_t> bad_scale = good;
    std::memcpy(bad_scale.data() + sealed.payload_offset + kKvHeads * kBlockSize * kHeadDim + 4,
                &scale, 4);
    expect_rejected(bad_scale, all, "layer 1 V block 0 head 1 has scale");
  }
  // Bad targets.
  EXPECT_THAT(std::string(ImportRect(&b, {1, 2}, 1, 37, all, good).message()),
              HasSubstr("the block table has 2 blocks"));
  EXPECT_THAT(std::string(ImportRect(&b, table, 5, 37, all, good).message()),
              HasSubstr("tail slot 5 is outside [0, 2)"));
  EXPECT_EQ(ExportAll(b, table, 1, 21), before);
  // And the good payload still imports.
  ASSERT_TRUE(ImportRect(&b, table, 1, 37, all, good).ok());
  EXPECT_EQ(ExportAll(b, table, 1, 37), good);
}

}  // namespace
}  // namespace duet::kv
