// Bookkeeping for the blocks of one paged KV pool (no Vulkan, no device memory).
//
// A BlockPool hands out block ids in [0, num_blocks) with a reference count, so a block can be
// shared (prefix caching, a sequence forked for speculation) and returns to the free list only
// when its last reference is released. Allocation is all-or-nothing: a caller never holds half
// of what it asked for. The same class serves any small id space (the FP8 tail slots of a
// decode node, for example).
//
// CanAllocate() is the dry run schedulers use to probe capacity without changing state.
// Thread safety: not thread-safe; one scheduler owns a pool.
#ifndef DUET_COMMON_KV_BLOCK_POOL_H_
#define DUET_COMMON_KV_BLOCK_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace duet::kv {

class BlockPool {
 public:
  // REQUIRES: 0 <= num_blocks <= INT32_MAX.
  explicit BlockPool(int64_t num_blocks);

  int64_t num_blocks() const { return static_cast<int64_t>(ref_counts_.size()); }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
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

  // 0 for a free block. REQUIRES: 0 <= block < num_blocks().
  int32_t ref_count(int32_t block) const { return ref_counts_[static_cast<size_t>(block)]; }

 private:
  absl::Status CheckHeld(absl::Span<const int32_t> blocks, bool count_duplicates) const;

  std::vector<int32_t> ref_counts_;  // [num_blocks]
  std::vector<int32_t> free_;        // stack; back() is handed out next
};

}  // namespace duet::kv

#endif  // DUET_COMMON_KV_BLOCK_POOL_H_
