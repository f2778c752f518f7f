#include "common/kv/block_pool.h"

#include <cstdlib>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"

namespace duet::kv {

BlockPool::BlockPool(int64_t num_blocks) {
  if (num_blocks < 0 || num_blocks > INT32_MAX) std::abort();  // broken invariant: caller bug
  ref_counts_.assign(static_cast<size_t>(num_blocks), 0);
  cached_hash_.assign(static_cast<size_t>(num_blocks), 0);
  evictable_pos_.assign(static_cast<size_t>(num_blocks), evictable_.end());
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

absl::StatusOr<std::vector<int32_t>> BlockPool::Allocate(int64_t n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cannot allocate ", n, " blocks"));
  if (n > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV pool has ", num_free(), " free blocks of ",
                                                     num_blocks(), "; ", n, " needed"));
  }
  std::vector<int32_t> blocks;
  blocks.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int32_t b;
    if (!free_.empty()) {
      b = free_.back();
      free_.pop_back();
    } else {
      b = evictable_.front();
      Evict(b);
    }
    ref_counts_[static_cast<size_t>(b)] = 1;
    blocks.push_back(b);
  }
  return blocks;
}

void BlockPool::Evict(int32_t block) {
  const size_t b = static_cast<size_t>(block);
  evictable_.erase(evictable_pos_[b]);
  evictable_pos_[b] = evictable_.end();
  by_hash_.erase(cached_hash_[b]);
  RecordEvent(/*stored=*/false, cached_hash_[b]);
  cached_hash_[b] = 0;
  ++num_evictions_;
}

int64_t BlockPool::LookupPrefix(absl::Span<const BlockHash> hashes) const {
  int64_t n = 0;
  while (n < static_cast<int64_t>(hashes.size()) &&
         by_hash_.contains(hashes[static_cast<size_t>(n)])) {
    ++n;
  }
  return n;
}

int64_t BlockPool::CountEvictable(absl::Span<const BlockHash> hashes, int64_t n) const {
  int64_t evictable = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = by_hash_.at(hashes[static_cast<size_t>(i)]);
    evictable += ref_counts_[static_cast<size_t>(b)] == 0 ? 1 : 0;
  }
  return evictable;
}

std::vector<int32_t> BlockPool::AcquirePrefix(absl::Span<const BlockHash> hashes, int64_t n) {
  std::vector<int32_t> blocks;
  blocks.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = by_hash_.at(hashes[static_cast<size_t>(i)]);
    const size_t bi = static_cast<size_t>(b);
    if (ref_counts_[bi]++ == 0) {
      evictable_.erase(evictable_pos_[bi]);
      evictable_pos_[bi] = evictable_.end();
    }
    blocks.push_back(b);
  }
  return blocks;
}

bool BlockPool::CacheBlock(int32_t block, BlockHash hash) {
  const size_t b = static_cast<size_t>(block);
  if (ref_counts_[b] == 0) std::abort();  // caller bug: only a held block's KV is known
  if (hash == 0) std::abort();  // not a HashBlock value
  if (cached_hash_[b] != 0 || by_hash_.contains(hash)) return false;
  cached_hash_[b] = hash;
  by_hash_.emplace(hash, block);
  RecordEvent(/*stored=*/true, hash);
  return true;
}

void BlockPool::RecordEvent(bool stored, BlockHash hash) {
  if (!record_events_ || events_.overflowed) return;
  if (static_cast<int64_t>(events_.stored.size() + events_.removed.size()) >= 4 * num_blocks()) {
    events_ = Events{.overflowed = true};
    return;
  }
  (stored ? events_.stored : events_.removed).push_back(hash);
}

BlockPool::Events BlockPool::TakeEvents() { return std::exchange(events_, {}); }

std::vector<BlockHash> BlockPool::CachedHashes() const {
  std::vector<BlockHash> hashes;
  hashes.reserve(by_hash_.size());
  for (const auto& [hash, block] : by_hash_) hashes.push_back(hash);
  return hashes;
}

absl::Status BlockPool::CheckHeld(absl::Span<const int32_t> blocks, bool count_duplicates) const {
  absl::flat_hash_map<int32_t, int32_t> uses;
  for (const int32_t b : blocks) {
    if (b < 0 || b >= num_blocks()) {
      return absl::FailedPreconditionError(
          absl::StrCat("block ", b, " is outside the pool [0, ", num_blocks(), ")"));
    }
    const int32_t count = ref_counts_[static_cast<size_t>(b)];
    if (count == 0) return absl::FailedPreconditionError(absl::StrCat("block ", b, " is free"));
    if (count_duplicates && ++uses[b] > count) {
      return absl::FailedPreconditionError(
          absl::StrCat("block ", b, " released more times than it is referenced (", count, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status BlockPool::Retain(absl::Span<const int32_t> blocks) {
  if (absl::Status s = CheckHeld(blocks, /*count_duplicates=*/false); !s.ok()) return s;
  for (const int32_t b : blocks) ++ref_counts_[static_cast<size_t>(b)];
  return absl::OkStatus();
}

absl::Status BlockPool::Release(absl::Span<const int32_t> blocks) {
  if (absl::Status s = CheckHeld(blocks, /*count_duplicates=*/true); !s.ok()) return s;
  // Last block first, so that among blocks released together a sequence's tail is evicted
  // before its prefix.
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    const size_t b = static_cast<size_t>(*it);
    if (--ref_counts_[b] != 0) continue;
    if (cached_hash_[b] != 0) {
      evictable_pos_[b] = evictable_.insert(evictable_.end(), *it);
    } else {
      free_.push_back(*it);
    }
  }
  return absl::OkStatus();
}

}  // namespace duet::kv
