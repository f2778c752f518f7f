#include "common/kv/block_pool.h"

#include <algorithm>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet::kv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(BlockPoolTest, AllocatesLowestIdsFirstAndAllOrNothing) {
  BlockPool pool(4);
  absl::StatusOr<std::vector<int32_t>> a = pool.Allocate(3);
  ASSERT_TRUE(a.ok());
  EXPECT_THAT(*a, ElementsAre(0, 1, 2));
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_FALSE(pool.CanAllocate(2));
  absl::StatusOr<std::vector<int32_t>> b = pool.Allocate(2);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("1 free blocks of 4; 2 needed"));
  EXPECT_EQ(pool.num_free(), 1);  // nothing taken by the failed call
  EXPECT_EQ(pool.Allocate(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(pool.Allocate(0).ok());
}

TEST(BlockPoolTest, SharedBlockIsFreedByItsLastReference) {
  BlockPool pool(2);
  std::vector<int32_t> blocks = *pool.Allocate(1);
  ASSERT_TRUE(pool.Retain(blocks).ok());
  EXPECT_EQ(pool.ref_count(blocks[0]), 2);
  ASSERT_TRUE(pool.Release(blocks).ok());
  EXPECT_EQ(pool.num_free(), 1);
  ASSERT_TRUE(pool.Release(blocks).ok());
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_EQ(pool.ref_count(blocks[0]), 0);
}

TEST(BlockPoolTest, RejectsDoubleFreeOutOfRangeAndFreeBlocksWithoutChangingState) {
  BlockPool pool(3);
  std::vector<int32_t> blocks = *pool.Allocate(2);
  const std::vector<int32_t> twice = {blocks[0], blocks[0]};
  absl::Status s = pool.Release(twice);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("released more times"));
  EXPECT_EQ(pool.ref_count(blocks[0]), 1);
  const std::vector<int32_t> out = {blocks[1], 7};
  EXPECT_THAT(pool.Release(out).message(), HasSubstr("outside the pool"));
  EXPECT_EQ(pool.ref_count(blocks[1]), 1);
  const std::vector<int32_t> free_block = {2};
  EXPECT_THAT(pool.Retain(free_block).message(), HasSubstr("block 2 is free"));
  EXPECT_THAT(pool.Release(free_block).message(), HasSubstr("block 2 is free"));
}

// Random allocate/retain/release traffic against a model of the counts: no block is ever
// handed out twice and the free count always matches.
TEST(BlockPoolTest, RandomTrafficKeepsCountsConsistent) {
  std::mt19937 rng(7);
  BlockPool pool(64);
  std::vector<int32_t> held;  // one entry per reference
  for (int step = 0; step < 5000; ++step) {
    const int op = static_cast<int>(rng() % 3);
    if (op == 0) {
      const int64_t n = rng() % 6;
      absl::StatusOr<std::vector<int32_t>> got = pool.Allocate(n);
      if (!got.ok()) continue;
      for (int32_t b : *got) {
        EXPECT_EQ(std::count(held.begin(), held.end(), b), 0);
        held.push_back(b);
      }
    } else if (op == 1 && !held.empty()) {
      const int32_t b = held[rng() % held.size()];
      ASSERT_TRUE(pool.Retain({b}).ok());
      held.push_back(b);
    } else if (!held.empty()) {
      const size_t i = rng() % held.size();
      ASSERT_TRUE(pool.Release({held[i]}).ok());
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
    }
    std::vector<int32_t> distinct = held;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    ASSERT_EQ(pool.num_used(), static_cast<int64_t>(distinct.size()));
  }
}

}  // namespace
}  // namespace duet::kv
