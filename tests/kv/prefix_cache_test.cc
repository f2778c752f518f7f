// Block hashing (golden values: every process and build must agree) and the block pool's
// prefix cache: lookup and sharing, refcounts, LRU eviction order, salt isolation, events.
#include <xxhash.h>

#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/kv/block_hash.h"
#include "common/kv/block_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet::kv {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

std::vector<int32_t> Iota(int n, int32_t first = 0) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Pinned: a change of these values breaks prefix matching between processes of different
// builds, so it must come with a new kBlockHashVersion.
TEST(BlockHashTest, GoldenValues) {
  const std::vector<BlockHash> hashes = HashBlocks("stories260K", "", Iota(40), 16);
  ASSERT_EQ(hashes.size(), 2u);  // the 8 tokens past the second block are not hashed
  EXPECT_EQ(hashes[0], 0x87a824a060a7c682ULL);
  EXPECT_EQ(hashes[1], 0xb1c21c93ea5151f9ULL);
  EXPECT_EQ(HashBlock(kRootParent, "m", "tenant-a", Iota(4, 7)), 0x06bbf348a0992b4fULL);
}

// The documented byte layout (little-endian, as this host), hashed with xxHash directly.
TEST(BlockHashTest, MatchesTheDocumentedByteLayout) {
  auto u32 = [](std::string* out, uint32_t v) { out->append(reinterpret_cast<char*>(&v), 4); };
  const std::vector<int32_t> tokens = {5, -1, 70000, 0};
  std::string bytes;
  u32(&bytes, kBlockHashVersion);
  const uint64_t parent = 0x0123456789abcdefULL;
  bytes.append(reinterpret_cast<const char*>(&parent), 8);
  u32(&bytes, 5);
  bytes += "model";
  u32(&bytes, 4);
  bytes += "salt";
  u32(&bytes, 4);
  for (int32_t t : tokens) u32(&bytes, static_cast<uint32_t>(t));
  EXPECT_EQ(HashBlock(parent, "model", "salt", tokens),
            XXH3_64bits_withSeed(bytes.data(), bytes.size(), kBlockHashSeed));
}

TEST(BlockHashTest, ChainsOverTheWholePrefixModelAndSalt) {
  const std::vector<int32_t> a = Iota(48);
  std::vector<int32_t> b = a;
  b[40] = 999;  // differs in the third block only
  const std::vector<BlockHash> ha = HashBlocks("m", "", a, 16);
  const std::vector<BlockHash> hb = HashBlocks("m", "", b, 16);
  EXPECT_EQ(ha[0], hb[0]);
  EXPECT_EQ(ha[1], hb[1]);
  EXPECT_NE(ha[2], hb[2]);
  // A change in the first block changes every later hash (they name whole prefixes).
  std::vector<int32_t> c = a;
  c[0] = 1;
  const std::vector<BlockHash> hc = HashBlocks("m", "", c, 16);
  for (size_t i = 0; i < 3; ++i) EXPECT_NE(ha[i], hc[i]) << i;
  // Salt and model id are part of every block's identity.
  const std::vector<BlockHash> salted = HashBlocks("m", "tenant", a, 16);
  const std::vector<BlockHash> other_model = HashBlocks("m2", "", a, 16);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NE(ha[i], salted[i]);
    EXPECT_NE(ha[i], other_model[i]);
  }
  // ("ab", "c") and ("a", "bc") are different (lengths are hashed too).
  EXPECT_NE(HashBlock(0, "ab", "c", a), HashBlock(0, "a", "bc", a));
  EXPECT_THAT(HashBlocks("m", "", Iota(15), 16), IsEmpty());
}

// A pool with sequence `tokens`' full blocks computed and cached, then released.
std::vector<int32_t> CacheSequence(BlockPool& pool, const std::vector<BlockHash>& hashes) {
  std::vector<int32_t> blocks = *pool.Allocate(static_cast<int64_t>(hashes.size()));
  for (size_t i = 0; i < hashes.size(); ++i) EXPECT_TRUE(pool.CacheBlock(blocks[i], hashes[i]));
  return blocks;
}

TEST(PrefixCacheTest, ReleasedCachedBlocksStayFindableAndCountAsFree) {
  BlockPool pool(8);
  const std::vector<BlockHash> h = HashBlocks("m", "", Iota(64), 16);
  const std::vector<int32_t> blocks = CacheSequence(pool, h);
  EXPECT_EQ(pool.num_cached(), 4);
  EXPECT_EQ(pool.num_free(), 4);
  ASSERT_TRUE(pool.Release(blocks).ok());
  EXPECT_EQ(pool.num_free(), 8);  // evictable blocks count as free
  EXPECT_EQ(pool.num_evictable(), 4);
  EXPECT_EQ(pool.LookupPrefix(h), 4);
  // A prompt sharing the first two blocks only.
  std::vector<int32_t> other = Iota(64);
  other[33] = -5;
  const std::vector<BlockHash> h2 = HashBlocks("m", "", other, 16);
  EXPECT_EQ(pool.LookupPrefix(h2), 2);
  EXPECT_EQ(pool.CountEvictable(h2, 2), 2);
  const std::vector<int32_t> shared = pool.AcquirePrefix(h2, 2);
  EXPECT_THAT(shared, ElementsAre(blocks[0], blocks[1]));
  EXPECT_EQ(pool.ref_count(blocks[0]), 1);
  EXPECT_EQ(pool.num_free(), 6);
  EXPECT_EQ(pool.CountEvictable(h2, 2), 0);
  // A second sharer: refcount 2, both must release.
  const std::vector<int32_t> again = pool.AcquirePrefix(h, 3);
  EXPECT_EQ(pool.ref_count(blocks[0]), 2);
  EXPECT_EQ(pool.ref_count(blocks[2]), 1);
  ASSERT_TRUE(pool.Release(shared).ok());
  EXPECT_EQ(pool.ref_count(blocks[0]), 1);
  ASSERT_TRUE(pool.Release(again).ok());
  EXPECT_EQ(pool.num_free(), 8);
  EXPECT_EQ(pool.num_cached(), 4);
  // A block whose hash another block holds already stays uncached and is freed as usual.
  std::vector<int32_t> dup = *pool.Allocate(1);
  EXPECT_FALSE(pool.CacheBlock(dup[0], h[0]));
  EXPECT_FALSE(pool.is_cached(dup[0]));
}

TEST(PrefixCacheTest, AllocationUsesFreeBlocksFirstThenEvictsLeastRecentlyReleased) {
  BlockPool pool(6);
  const std::vector<BlockHash> a = HashBlocks("m", "", Iota(32, 0), 16);
  const std::vector<BlockHash> b = HashBlocks("m", "", Iota(32, 100), 16);
  const std::vector<int32_t> blocks_a = CacheSequence(pool, a);  // blocks 0, 1
  const std::vector<int32_t> blocks_b = CacheSequence(pool, b);  // blocks 2, 3
  ASSERT_TRUE(pool.Release(blocks_a).ok());  // released first: evicted first
  ASSERT_TRUE(pool.Release(blocks_b).ok());
  // Two never-cached blocks are free: they go first, nothing is evicted.
  std::vector<int32_t> x = *pool.Allocate(2);
  EXPECT_THAT(x, UnorderedElementsAre(4, 5));
  EXPECT_EQ(pool.num_evictions(), 0);
  // Then a's blocks, its tail block before its first block.
  std::vector<int32_t> y = *pool.Allocate(1);
  EXPECT_THAT(y, ElementsAre(blocks_a[1]));
  EXPECT_EQ(pool.LookupPrefix(a), 1);  // the prefix survived its tail
  std::vector<int32_t> z = *pool.Allocate(1);
  EXPECT_THAT(z, ElementsAre(blocks_a[0]));
  EXPECT_EQ(pool.LookupPrefix(a), 0);
  EXPECT_EQ(pool.LookupPrefix(b), 2);
  EXPECT_EQ(pool.num_evictions(), 2);
  EXPECT_FALSE(pool.is_cached(blocks_a[0]));
  // A block in use is never evicted: b's blocks are taken, nothing else is free.
  const std::vector<int32_t> held = pool.AcquirePrefix(b, 2);
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_EQ(pool.Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool.LookupPrefix(b), 2);
  // Touching a prefix makes it recent again: after reuse, b outlives a block released earlier.
  ASSERT_TRUE(pool.Release(x).ok());
  ASSERT_TRUE(pool.Release(held).ok());
  std::vector<int32_t> w = *pool.Allocate(2);
  EXPECT_THAT(w, UnorderedElementsAre(4, 5));
  EXPECT_EQ(pool.LookupPrefix(b), 2);
}

TEST(PrefixCacheTest, SaltsNeverShareBlocks) {
  BlockPool pool(4);
  const std::vector<int32_t> prompt = Iota(32);
  const std::vector<int32_t> blocks = CacheSequence(pool, HashBlocks("m", "tenant-a", prompt, 16));
  ASSERT_TRUE(pool.Release(blocks).ok());
  EXPECT_EQ(pool.LookupPrefix(HashBlocks("m", "tenant-a", prompt, 16)), 2);
  EXPECT_EQ(pool.LookupPrefix(HashBlocks("m", "tenant-b", prompt, 16)), 0);
  EXPECT_EQ(pool.LookupPrefix(HashBlocks("m", "", prompt, 16)), 0);
}

TEST(PrefixCacheTest, RecordsStoredAndRemovedEvents) {
  BlockPool pool(2);
  pool.set_record_events(true);
  const std::vector<BlockHash> a = HashBlocks("m", "", Iota(32), 16);
  const std::vector<int32_t> blocks = CacheSequence(pool, a);
  BlockPool::Events e = pool.TakeEvents();
  EXPECT_THAT(e.stored, ElementsAre(a[0], a[1]));
  EXPECT_THAT(e.removed, IsEmpty());
  EXPECT_THAT(pool.CachedHashes(), UnorderedElementsAre(a[0], a[1]));
  ASSERT_TRUE(pool.Release(blocks).ok());
  ASSERT_TRUE(pool.Allocate(2).ok());
  e = pool.TakeEvents();
  EXPECT_THAT(e.stored, IsEmpty());
  EXPECT_THAT(e.removed, ElementsAre(a[1], a[0]));
  EXPECT_THAT(pool.TakeEvents().removed, IsEmpty());
}

// Random operations against a simple model: refcounts, free counts and cache contents agree,
// a held block is never handed out twice.
TEST(PrefixCacheTest, RandomOperationsKeepThePoolConsistent) {
  std::mt19937 rng(7);
  BlockPool pool(32);
  std::vector<std::vector<int32_t>> held;  // sequences' block tables
  for (int step = 0; step < 4000; ++step) {
    const int op = static_cast<int>(rng() % 3);
    if (op == 0 || held.empty()) {
      // A new sequence over one of 6 prompts (so prefixes repeat), caching its full blocks.
      std::vector<int32_t> prompt = Iota(16 * (1 + static_cast<int>(rng() % 4)));
      prompt.back() += static_cast<int32_t>(rng() % 6);
      const std::vector<BlockHash> h = HashBlocks("m", "", prompt, 16);
      const int64_t hit = pool.LookupPrefix(h);
      const int64_t fresh = static_cast<int64_t>(h.size()) - hit;
      if (pool.num_free() - pool.CountEvictable(h, hit) < fresh) continue;
      std::vector<int32_t> table = pool.AcquirePrefix(h, hit);
      std::vector<int32_t> more = *pool.Allocate(fresh);
      table.insert(table.end(), more.begin(), more.end());
      for (size_t i = static_cast<size_t>(hit); i < h.size(); ++i) pool.CacheBlock(table[i], h[i]);
      held.push_back(table);
    } else {
      const size_t i = rng() % held.size();
      ASSERT_TRUE(pool.Release(held[i]).ok());
      held.erase(held.begin() + static_cast<long>(i));
    }
    std::vector<int32_t> refs(32, 0);
    for (const auto& t : held) {
      for (int32_t b : t) ++refs[static_cast<size_t>(b)];
    }
    int64_t used = 0;
    for (int32_t b = 0; b < 32; ++b) {
      ASSERT_EQ(pool.ref_count(b), refs[static_cast<size_t>(b)]) << "step " << step;
      used += refs[static_cast<size_t>(b)] > 0 ? 1 : 0;
    }
    ASSERT_EQ(pool.num_free(), 32 - used);
    ASSERT_LE(pool.num_evictable(), pool.num_cached());
  }
}

}  // namespace
}  // namespace duet::kv
