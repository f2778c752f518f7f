// Bookkeeping for the blocks of one paged KV pool (no Vulkan, no device memory).
//
// A BlockPool hands out block ids in [0, num_blocks) with a reference count, so a block can be
// shared (prefix caching, a sequence forked for speculation) and returns to the free list only
// when its last reference is released. Allocation is all-or-nothing: a caller never holds half
// of what it asked for. The same class serves any small id space (the FP8 tail slots of a
// decode node, for example).
//
// CanAllocate() is the dry run schedulers use to probe capacity without changing state.
//
// Prefix caching (as vLLM's block pool): a block whose KV is final may be registered under its
// content hash (common/kv/block_hash.h) with CacheBlock; the pool then finds it by hash
// (LookupPrefix / AcquirePrefix), so another sequence with the same prefix shares it instead of
// recomputing it. A cached block whose last reference is released is not freed but kept
// "evictable", in least-recently-released order (the blocks of one Release from its last
// block to its first, so a prefix outlives its own tail). Allocate hands out never-cached free
// blocks first, then evicts the least recently released evictable blocks (forgetting their
// hashes). Evictable blocks count as free, and a referenced block is never evicted.
//
// Thread safety: not thread-safe; one scheduler owns a pool.
#ifndef DUET_COMMON_KV_BLOCK_POOL_H_
#define DUET_COMMON_KV_BLOCK_POOL_H_

#include <cstdint>
#include <list>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "common/kv/block_hash.h"

namespace duet::kv {

class BlockPool {
 public:
  // REQUIRES: 0 <= num_blocks <= INT32_MAX.
  explicit BlockPool(int64_t num_blocks);

  int64_t num_blocks() const { return static_cast<int64_t>(ref_counts_.size()); }
  // Free blocks, evictable cached ones included.
  int64_t num_free() const { return static_cast<int64_t>(free_.size() + evictable_.size()); }
  int64_t num_used() const { return num_blocks() - num_free(); }
  bool CanAllocate(int64_t n) const { return n >= 0 && n <= num_free(); }

  // n fresh blocks, each with one reference, lowest ids first on a fresh pool.
  // RESOURCE_EXHAUSTED (naming n and the free count) when fewer than n are free, with nothing
  // allocated; INVALID_ARGUMENT for n < 0.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n);

  // One more reference to each block. FAILED_PRECONDITION (nothing changed) if any block is out
  // of range or free.
  absl::Status Retain(absl::Span<const int32_t> blocks);

  // One reference fewer for each block; a block whose count reaches 0 is free again.
  // FAILED_PRECONDITION (nothing changed) if any block is out of range, free, or released more
  // times than it is referenced in `blocks` (a double free).
  absl::Status Release(absl::Span<const int32_t> blocks);

  // 0 for a free (or evictable) block. REQUIRES: 0 <= block < num_blocks().
  int32_t ref_count(int32_t block) const { return ref_counts_[static_cast<size_t>(block)]; }

  // --- Prefix caching ---

  // How many of `hashes` (a sequence's block hashes, in order) are cached, counted from the
  // first up to the first miss.
  int64_t LookupPrefix(absl::Span<const BlockHash> hashes) const;
  // Of the blocks of the first n hashes, how many are evictable now (acquiring them takes them
  // out of num_free). REQUIRES: n <= LookupPrefix(hashes).
  int64_t CountEvictable(absl::Span<const BlockHash> hashes, int64_t n) const;
  // One more reference to the blocks of the first n hashes (evictable ones are in use again),
  // in order. REQUIRES: 0 <= n <= LookupPrefix(hashes).
  std::vector<int32_t> AcquirePrefix(absl::Span<const BlockHash> hashes, int64_t n);
  // Registers a held block under `hash` once its KV is final. False, with nothing changed,
  // when another block is cached under the hash already (the block stays uncached and is freed
  // as usual) or this block has a hash. REQUIRES: ref_count(block) > 0, hash != 0.
  bool CacheBlock(int32_t block, BlockHash hash);
  bool is_cached(int32_t block) const { return cached_hash_[static_cast<size_t>(block)] != 0; }

  int64_t num_cached() const { return static_cast<int64_t>(by_hash_.size()); }
  int64_t num_evictable() const { return static_cast<int64_t>(evictable_.size()); }
  int64_t num_evictions() const { return num_evictions_; }

  // KV events, for a router's index of which node holds which blocks: with recording on, every
  // hash that became cached (CacheBlock) or stopped being cached (eviction) is logged in order
  // until TakeEvents returns it.
  // At most 4 x num_blocks events are kept; past that they are dropped and `overflowed` is set
  // (the reader then takes a full snapshot with CachedHashes instead).
  struct Events {
    std::vector<BlockHash> stored;
    std::vector<BlockHash> removed;
    bool overflowed = false;
  };
  void set_record_events(bool on) { record_events_ = on; }
  Events TakeEvents();
  // Every cached hash now (a full snapshot, e.g. after the router lost track).
  std::vector<BlockHash> CachedHashes() const;

 private:
  absl::Status CheckHeld(absl::Span<const int32_t> blocks, bool count_duplicates) const;
  void Evict(int32_t block);
  void RecordEvent(bool stored, BlockHash hash);

  std::vector<int32_t> ref_counts_;  // [num_blocks]
  std::vector<int32_t> free_;        // never-cached free blocks; stack, back() goes next
  // Cached blocks: hash (0 = none; HashBlock never returns 0) and, for
  // evictable ones, their place in `evictable_` (front = released longest ago).
  std::vector<BlockHash> cached_hash_;  // [num_blocks]
  absl::flat_hash_map<BlockHash, int32_t> by_hash_;
  std::list<int32_t> evictable_;
  std::vector<std::list<int32_t>::iterator> evictable_pos_;  // [num_blocks]
  int64_t num_evictions_ = 0;
  bool record_events_ = false;
  Events events_;
};

}  // namespace duet::kv

#endif  // DUET_COMMON_KV_BLOCK_POOL_H_
