// Sub-allocation, buffers, uploads/downloads and splitting of large tensors.
#include "common/vk/memory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>

#include "common/vk/buffer.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using ::testing::HasSubstr;

TEST(RangeAllocatorTest, FirstFitWithAlignmentAndCoalescing) {
  RangeAllocator ranges(1024);
  EXPECT_EQ(ranges.Allocate(100, 1), 0u);
  EXPECT_EQ(ranges.Allocate(10, 64), 128u);  // [100, 128) stays free
  EXPECT_EQ(ranges.Allocate(28, 4), 100u);   // first fit reuses the gap
  EXPECT_EQ(ranges.free_bytes(), 1024u - 138u);
  EXPECT_FALSE(ranges.Allocate(2000, 1).has_value());
  ranges.Free(100, 28);
  ranges.Free(0, 100);
  ranges.Free(128, 10);
  EXPECT_EQ(ranges.free_bytes(), 1024u);
  EXPECT_EQ(ranges.num_free_ranges(), 1);  // everything merged back
  EXPECT_EQ(ranges.largest_free_range(), 1024u);
  EXPECT_EQ(ranges.Allocate(1024, 256), 0u);
  EXPECT_FALSE(ranges.Allocate(1, 1).has_value());
}

TEST(RangeAllocatorTest, RandomAllocFreeKeepsAccounting) {
  std::mt19937 rng(testing::TestSeed());
  RangeAllocator ranges(1 << 20);
  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (int step = 0; step < 2000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      const uint64_t size = 1 + rng() % 5000;
      const uint64_t alignment = uint64_t{1} << (rng() % 9);
      if (std::optional<uint64_t> offset = ranges.Allocate(size, alignment)) {
        ASSERT_EQ(*offset % alignment, 0u);
        for (const auto& [o, s] : live) ASSERT_TRUE(*offset + size <= o || o + s <= *offset);
        live.emplace_back(*offset, size);
      }
    } else {
      const size_t i = rng() % live.size();
      ranges.Free(live[i].first, live[i].second);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  uint64_t used = 0;
  for (const auto& [o, s] : live) used += s;
  EXPECT_EQ(ranges.free_bytes(), ranges.capacity() - used);
  for (const auto& [o, s] : live) ranges.Free(o, s);
  EXPECT_EQ(ranges.num_free_ranges(), 1);
}

TEST(SplitRowsTest, OneChunkWhenItFits) {
  const BufferView tensor{reinterpret_cast<VkBuffer>(uintptr_t{1}), 256, 4000};
  const absl::StatusOr<std::vector<RowChunk>> chunks = SplitRows(tensor, 10, 400, 4096, 64);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  ASSERT_EQ(chunks->size(), 1u);
  EXPECT_EQ((*chunks)[0].view.offset, 256u);
  EXPECT_EQ((*chunks)[0].view.size, 4000u);
  EXPECT_EQ((*chunks)[0].num_rows, 10);
}

TEST(SplitRowsTest, ChunksAreRowAlignedBoundedAndOffsetAligned) {
  // Q8_0 rows of 64 elements: 68 bytes, not a multiple of the 16-byte alignment.
  const int64_t rows = 1000;
  const int64_t row_bytes = 68;
  const BufferView tensor{reinterpret_cast<VkBuffer>(uintptr_t{1}), 0, 68000};
  for (uint64_t limit : {1000u, 4096u, 777u}) {
    const absl::StatusOr<std::vector<RowChunk>> chunks =
        SplitRows(tensor, rows, row_bytes, limit, 16);
    ASSERT_TRUE(chunks.ok()) << chunks.status();
    int64_t next_row = 0;
    for (const RowChunk& c : *chunks) {
      EXPECT_EQ(c.first_row, next_row);
      EXPECT_LE(c.view.size, limit);
      EXPECT_EQ(c.view.size, static_cast<uint64_t>(c.num_rows * row_bytes));
      EXPECT_EQ(c.view.offset, static_cast<uint64_t>(c.first_row * row_bytes));
      EXPECT_EQ(c.view.offset % 16, 0u);
      next_row += c.num_rows;
    }
    EXPECT_EQ(next_row, rows);
  }
}

TEST(SplitRowsTest, Errors) {
  const BufferView tensor{reinterpret_cast<VkBuffer>(uintptr_t{1}), 0, 1000};
  EXPECT_THAT(SplitRows(tensor, 10, 200, 4096, 16).status().message(), HasSubstr("smaller"));
  EXPECT_THAT(SplitRows(tensor, 10, 100, 64, 16).status().message(), HasSubstr("exceeds"));
  // 3 rows of 20 bytes fit in 64, but chunks must be multiples of 4 rows to stay 16-aligned.
  EXPECT_FALSE(SplitRows(tensor, 10, 20, 64, 16).ok());
  EXPECT_EQ(*RowsPerChunk(20, 100, 16), 4);
  EXPECT_EQ(*RowsPerChunk(64, 1000, 256), 12);
  EXPECT_EQ(*RowsPerChunk(3, 100, 1), 33);
}

class MemoryTest : public testing::VkTest {};

TEST_F(MemoryTest, SmallBuffersShareABlock) {
  DeviceOptions options;
  options.device = std::to_string(device().info().index);
  options.block_bytes = uint64_t{1} << 20;
  absl::StatusOr<std::unique_ptr<Device>> created = Device::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  Device& dev = **created;
  {
    std::vector<Buffer> buffers;
    for (int i = 0; i < 20; ++i) {
      absl::StatusOr<Buffer> b = dev.CreateBuffer(1000 + i);
      ASSERT_TRUE(b.ok()) << b.status();
      buffers.push_back(std::move(b).value());
    }
    MemoryStats stats = dev.memory_stats();
    EXPECT_EQ(stats.num_blocks, 1);
    EXPECT_EQ(stats.num_buffers, 20);
    // A buffer larger than a block gets a dedicated allocation.
    absl::StatusOr<Buffer> big = dev.CreateBuffer(3 << 20);
    ASSERT_TRUE(big.ok()) << big.status();
    stats = dev.memory_stats();
    EXPECT_EQ(stats.num_blocks, 1);
    EXPECT_GE(stats.reserved_bytes, (uint64_t{1} << 20) + (3 << 20));
    // Filling the block spills into a second one.
    for (int i = 0; i < 8; ++i) buffers.push_back(std::move(dev.CreateBuffer(200000)).value());
    EXPECT_EQ(dev.memory_stats().num_blocks, 2);
  }
  const MemoryStats after = dev.memory_stats();
  EXPECT_EQ(after.num_buffers, 0);
  EXPECT_EQ(after.used_bytes, 0u);
  EXPECT_LE(after.num_blocks, 1);  // one empty block is kept for reuse
}

TEST_F(MemoryTest, UploadDownloadRoundTripsForEveryKind) {
  std::mt19937 rng(testing::TestSeed());
  for (MemoryKind kind : {MemoryKind::kDevice, MemoryKind::kUpload, MemoryKind::kReadback}) {
    const std::vector<float> data = testing::RandomFloats(rng, 12345, -1.0f, 1.0f);
    Buffer buffer = testing::Upload(device(), data, kind);
    EXPECT_EQ(buffer.size(), data.size() * 4);
    if (kind != MemoryKind::kDevice || device().limits().unified_memory) {
      EXPECT_TRUE(buffer.host_visible());
    }
    EXPECT_EQ(testing::Download<float>(device(), buffer.view()), data);
    // A sub-range.
    const std::vector<float> part = testing::Download<float>(device(), buffer.view(400, 40));
    EXPECT_EQ(part, std::vector<float>(data.begin() + 100, data.begin() + 110));
  }
}

TEST_F(MemoryTest, ZeroSizedBufferIsRejected) {
  EXPECT_EQ(device().CreateBuffer(0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(MemoryTest, MoveTransfersOwnership) {
  const int64_t before = device().memory_stats().num_buffers;
  {
    Buffer a = std::move(device().CreateBuffer(64)).value();
    Buffer b = std::move(a);
    EXPECT_EQ(a.handle(), VK_NULL_HANDLE);
    EXPECT_NE(b.handle(), VK_NULL_HANDLE);
    EXPECT_EQ(device().memory_stats().num_buffers, before + 1);
  }
  EXPECT_EQ(device().memory_stats().num_buffers, before);
}

}  // namespace
}  // namespace duet::vk
