#include "common/kv/block_pool.h"

#include <cstdlib>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"

namespace duet::kv {

BlockPool::BlockPool(int64_t num_blocks) {
  if (num_blocks < 0 || num_blocks > INT32_MAX) std::abort();  // broken invariant: caller bug
  ref_counts_.assign(static_cast<size_t>(num_blocks), 0);
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
    const int32_t b = free_.back();
    free_.pop_back();
    ref_counts_[static_cast<size_t>(b)] = 1;
    blocks.push_back(b);
  }
  return blocks;
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
  for (const int32_t b : blocks) {
    if (--ref_counts_[static_cast<size_t>(b)] == 0) free_.push_back(b);
  }
  return absl::OkStatus();
}

}  // namespace duet::kv
