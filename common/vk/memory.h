// Sub-allocation of device memory (internal to common/vk; users see Device::CreateBuffer).
//
// Each memory type gets blocks of DeviceOptions::block_bytes (256 MiB by default) from
// vkAllocateMemory; buffers take first-fit ranges of a block (RangeAllocator). Of the blocks
// left empty, one per memory type is kept for reuse and the rest go back to the driver.
// Requests larger than a block get a dedicated allocation. Host-visible blocks are mapped once, for
// their whole life.
#ifndef DUET_COMMON_VK_MEMORY_H_
#define DUET_COMMON_VK_MEMORY_H_

#include <vulkan/vulkan.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/vk/buffer.h"
#include "common/vk/device.h"

namespace duet::vk {

// First-fit allocator of byte ranges in [0, capacity). Free ranges are kept sorted by offset and
// coalesced with their neighbours on Free. Pure bookkeeping: no Vulkan. Not thread-safe.
class RangeAllocator {
 public:
  explicit RangeAllocator(uint64_t capacity);

  // The lowest offset, a multiple of `alignment`, with `size` free bytes after it; nullopt when
  // no free range fits. REQUIRES: size > 0, alignment a power of two.
  std::optional<uint64_t> Allocate(uint64_t size, uint64_t alignment);
  // Returns [offset, offset + size) to the free list.
  // REQUIRES: exactly a range that Allocate returned (same size) and not yet freed.
  void Free(uint64_t offset, uint64_t size);

  uint64_t capacity() const { return capacity_; }
  uint64_t free_bytes() const { return free_bytes_; }
  uint64_t largest_free_range() const;
  int64_t num_free_ranges() const { return static_cast<int64_t>(free_.size()); }

 private:
  uint64_t capacity_;
  uint64_t free_bytes_;
  std::map<uint64_t, uint64_t> free_;  // offset -> size, non-adjacent
};

// The memory type index for `kind` among those in `allowed_types` (a memoryTypeBits mask), or
// -1. kDevice prefers DEVICE_LOCAL | HOST_VISIBLE | HOST_COHERENT when `unified_memory`, else
// DEVICE_LOCAL without HOST_VISIBLE (keeping small BAR heaps free); kUpload wants HOST_VISIBLE |
// HOST_COHERENT, preferring types that are not DEVICE_LOCAL; kReadback also prefers HOST_CACHED.
int FindMemoryType(const VkPhysicalDeviceMemoryProperties& properties, uint32_t allowed_types,
                   MemoryKind kind, bool unified_memory);

// True when some DEVICE_LOCAL | HOST_VISIBLE | HOST_COHERENT type lives on the largest
// DEVICE_LOCAL heap (integrated GPUs, CPU devices; not a discrete GPU's 256 MiB BAR window).
bool IsUnifiedMemory(const VkPhysicalDeviceMemoryProperties& properties);

// Creates buffers in sub-allocated memory. Thread-safe.
class MemoryAllocator {
 public:
  // REQUIRES: buffer_alignment is a power of two (minStorageBufferOffsetAlignment).
  MemoryAllocator(VkDevice device, VkPhysicalDevice physical_device, uint64_t block_bytes,
                  uint64_t buffer_alignment, bool unified_memory);
  MemoryAllocator(const MemoryAllocator&) = delete;
  MemoryAllocator& operator=(const MemoryAllocator&) = delete;
  // Frees the blocks. Crashes when buffers are still alive (they would dangle).
  ~MemoryAllocator();

  absl::StatusOr<Buffer> Create(uint64_t bytes, MemoryKind kind);
  MemoryStats stats() const;
  // The persistent mapping of a live buffer made here, or nullptr when it is not host-visible.
  void* MappedPointer(VkBuffer buffer) const;
  // A cached VkBufferView of a live buffer made here; destroyed with the buffer.
  absl::StatusOr<VkBufferView> TexelView(BufferView view, VkFormat format);

 private:
  friend class Buffer;
  struct Block {
    uint32_t memory_type = 0;
    VkDeviceMemory memory = VK_NULL_HANDLE;
    void* mapped = nullptr;
    RangeAllocator ranges;
    int64_t num_buffers = 0;
  };

  // Called by Buffer's destructor.
  void Free(Buffer& buffer);
  // Allocates (and maps, when host-visible) `bytes` of `memory_type`.
  absl::StatusOr<std::pair<VkDeviceMemory, void*>> AllocateMemory(uint32_t memory_type,
                                                                  uint64_t bytes);

  VkDevice device_;
  VkPhysicalDeviceMemoryProperties properties_;
  uint64_t block_bytes_;
  uint64_t buffer_alignment_;
  bool unified_memory_;

  mutable absl::Mutex mutex_;
  std::vector<std::unique_ptr<Block>> blocks_ ABSL_GUARDED_BY(mutex_);  // null = released
  uint64_t dedicated_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t used_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t num_buffers_ ABSL_GUARDED_BY(mutex_) = 0;
  std::unordered_map<VkBuffer, void*> mapped_ ABSL_GUARDED_BY(mutex_);  // host-visible buffers
  // Texel views per buffer, keyed by (offset, size, format).
  struct TexelKey {
    uint64_t offset;
    uint64_t size;
    VkFormat format;
    bool operator<(const TexelKey& o) const {
      return std::tie(offset, size, format) < std::tie(o.offset, o.size, o.format);
    }
  };
  std::unordered_map<VkBuffer, std::map<TexelKey, VkBufferView>> texel_views_
      ABSL_GUARDED_BY(mutex_);
};

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_MEMORY_H_
