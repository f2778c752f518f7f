#include "common/vk/memory.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/vk/vk_status.h"

namespace duet::vk {
namespace {

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

bool IsPowerOfTwo(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

[[noreturn]] void Die(const char* message) {
  std::fprintf(stderr, "duet::vk fatal: %s\n", message);
  std::abort();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// BufferView, Buffer, splitting.

BufferView BufferView::Sub(uint64_t sub_offset, uint64_t sub_size) const {
  if (sub_offset > size || sub_size > size - sub_offset) Die("BufferView::Sub out of range");
  return BufferView{buffer, offset + sub_offset, sub_size};
}

Buffer::Buffer(Buffer&& other) noexcept { *this = std::move(other); }

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this == &other) return *this;
  Release();
  allocator_ = std::exchange(other.allocator_, nullptr);
  buffer_ = std::exchange(other.buffer_, VK_NULL_HANDLE);
  size_ = std::exchange(other.size_, 0);
  kind_ = other.kind_;
  mapped_ = std::exchange(other.mapped_, nullptr);
  memory_type_ = other.memory_type_;
  block_ = std::exchange(other.block_, -1);
  block_offset_ = std::exchange(other.block_offset_, 0);
  block_bytes_ = std::exchange(other.block_bytes_, 0);
  dedicated_ = std::exchange(other.dedicated_, VK_NULL_HANDLE);
  return *this;
}

Buffer::~Buffer() { Release(); }

void Buffer::Release() {
  if (allocator_ != nullptr) allocator_->Free(*this);
  allocator_ = nullptr;
  buffer_ = VK_NULL_HANDLE;
  mapped_ = nullptr;
  size_ = 0;
}

absl::StatusOr<int64_t> RowsPerChunk(int64_t row_bytes, uint64_t max_range,
                                     uint64_t offset_alignment) {
  if (!IsPowerOfTwo(offset_alignment)) Die("RowsPerChunk: alignment must be a power of two");
  if (row_bytes <= 0) return absl::InvalidArgumentError("RowsPerChunk: row_bytes must be > 0");
  const uint64_t row = static_cast<uint64_t>(row_bytes);
  if (row > max_range) {
    return absl::InvalidArgumentError(absl::StrCat(
        "one row of ", row_bytes, " bytes exceeds the bindable range of ", max_range, " bytes"));
  }
  // Chunks must hold a multiple of `step` rows so that step * row_bytes is aligned:
  // step = alignment / gcd(alignment, row_bytes), i.e. the alignment over row's power-of-two part.
  const uint64_t row_pow2 = row & (~row + 1);  // lowest set bit
  const uint64_t step = offset_alignment > row_pow2 ? offset_alignment / row_pow2 : 1;
  const uint64_t fit = max_range / row;
  const uint64_t rows = fit - fit % step;
  if (rows == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("no whole number of ", row_bytes, "-byte rows fits in ", max_range,
                     " bytes while keeping chunks aligned to ", offset_alignment, " bytes"));
  }
  return static_cast<int64_t>(rows);
}

absl::StatusOr<std::vector<RowChunk>> SplitRows(BufferView tensor, int64_t rows, int64_t row_bytes,
                                                uint64_t max_range, uint64_t offset_alignment) {
  if (rows < 0 || row_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("SplitRows: bad shape [", rows, ", ", row_bytes, " bytes]"));
  }
  const uint64_t total = static_cast<uint64_t>(rows) * static_cast<uint64_t>(row_bytes);
  if (tensor.size < total) {
    return absl::InvalidArgumentError(absl::StrCat("SplitRows: view of ", tensor.size,
                                                   " bytes is smaller than [", rows, ", ",
                                                   row_bytes, " bytes]"));
  }
  std::vector<RowChunk> chunks;
  if (total <= max_range) {
    if (rows > 0) chunks.push_back(RowChunk{tensor.Sub(0, total), 0, rows});
    return chunks;
  }
  absl::StatusOr<int64_t> per_chunk = RowsPerChunk(row_bytes, max_range, offset_alignment);
  if (!per_chunk.ok()) return per_chunk.status();
  for (int64_t first = 0; first < rows; first += *per_chunk) {
    const int64_t n = std::min(*per_chunk, rows - first);
    chunks.push_back(
        RowChunk{tensor.Sub(static_cast<uint64_t>(first) * static_cast<uint64_t>(row_bytes),
                            static_cast<uint64_t>(n) * static_cast<uint64_t>(row_bytes)),
                 first, n});
  }
  return chunks;
}

// ---------------------------------------------------------------------------------------------
// RangeAllocator.

RangeAllocator::RangeAllocator(uint64_t capacity) : capacity_(capacity), free_bytes_(capacity) {
  if (capacity > 0) free_.emplace(0, capacity);
}

std::optional<uint64_t> RangeAllocator::Allocate(uint64_t size, uint64_t alignment) {
  if (size == 0 || !IsPowerOfTwo(alignment)) Die("RangeAllocator::Allocate: bad size/alignment");
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    const uint64_t start = it->first;
    const uint64_t end = it->first + it->second;
    const uint64_t aligned = AlignUp(start, alignment);
    if (aligned > end || end - aligned < size) continue;
    free_.erase(it);
    if (aligned > start) free_.emplace(start, aligned - start);
    if (aligned + size < end) free_.emplace(aligned + size, end - aligned - size);
    free_bytes_ -= size;
    return aligned;
  }
  return std::nullopt;
}

void RangeAllocator::Free(uint64_t offset, uint64_t size) {
  if (size == 0 || offset > capacity_ || size > capacity_ - offset) {
    Die("RangeAllocator::Free: range outside the capacity");
  }
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && next->first < offset + size) Die("RangeAllocator::Free: double free");
  uint64_t start = offset;
  uint64_t end = offset + size;
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second > offset) Die("RangeAllocator::Free: double free");
    if (prev->first + prev->second == offset) {
      start = prev->first;
      free_.erase(prev);
    }
  }
  if (next != free_.end() && next->first == end) {
    end = next->first + next->second;
    free_.erase(next);
  }
  free_.emplace(start, end - start);
  free_bytes_ += size;
}

uint64_t RangeAllocator::largest_free_range() const {
  uint64_t largest = 0;
  for (const auto& [offset, size] : free_) largest = std::max(largest, size);
  return largest;
}

// ---------------------------------------------------------------------------------------------
// Memory types.

bool IsUnifiedMemory(const VkPhysicalDeviceMemoryProperties& properties) {
  VkDeviceSize largest_local_heap = 0;
  for (uint32_t h = 0; h < properties.memoryHeapCount; ++h) {
    if (properties.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) {
      largest_local_heap = std::max(largest_local_heap, properties.memoryHeaps[h].size);
    }
  }
  constexpr VkMemoryPropertyFlags kWanted = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT |
                                            VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                            VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  for (uint32_t t = 0; t < properties.memoryTypeCount; ++t) {
    const VkMemoryType& type = properties.memoryTypes[t];
    if ((type.propertyFlags & kWanted) == kWanted &&
        properties.memoryHeaps[type.heapIndex].size >= largest_local_heap) {
      return true;
    }
  }
  return false;
}

int FindMemoryType(const VkPhysicalDeviceMemoryProperties& properties, uint32_t allowed_types,
                   MemoryKind kind, bool unified_memory) {
  constexpr VkMemoryPropertyFlags kLocal = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
  constexpr VkMemoryPropertyFlags kHost =
      VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  constexpr VkMemoryPropertyFlags kCached = VK_MEMORY_PROPERTY_HOST_CACHED_BIT;
  // (required flags, flags that must be absent), most preferred first.
  std::vector<std::pair<VkMemoryPropertyFlags, VkMemoryPropertyFlags>> wishes;
  switch (kind) {
    case MemoryKind::kDevice:
      if (unified_memory) wishes.push_back({kLocal | kHost, 0});
      wishes.push_back({kLocal, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT});
      wishes.push_back({kLocal, 0});
      wishes.push_back({0, 0});
      break;
    case MemoryKind::kUpload:
      wishes.push_back({kHost, kLocal});
      wishes.push_back({kHost, 0});
      break;
    case MemoryKind::kReadback:
      wishes.push_back({kHost | kCached, kLocal});
      wishes.push_back({kHost | kCached, 0});
      wishes.push_back({kHost, 0});
      break;
  }
  for (const auto& [required, absent] : wishes) {
    for (uint32_t t = 0; t < properties.memoryTypeCount; ++t) {
      const VkMemoryPropertyFlags flags = properties.memoryTypes[t].propertyFlags;
      if ((allowed_types & (1u << t)) && (flags & required) == required && (flags & absent) == 0) {
        return static_cast<int>(t);
      }
    }
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// MemoryAllocator.

MemoryAllocator::MemoryAllocator(VkDevice device, VkPhysicalDevice physical_device,
                                 uint64_t block_bytes, uint64_t buffer_alignment,
                                 bool unified_memory)
    : device_(device),
      block_bytes_(block_bytes),
      buffer_alignment_(buffer_alignment),
      unified_memory_(unified_memory) {
  if (!IsPowerOfTwo(buffer_alignment)) Die("MemoryAllocator: alignment must be a power of two");
  vkGetPhysicalDeviceMemoryProperties(physical_device, &properties_);
}

MemoryAllocator::~MemoryAllocator() {
  absl::MutexLock lock(&mutex_);
  if (num_buffers_ != 0) Die("Device destroyed while Buffers made from it are alive");
  for (auto& block : blocks_) {
    if (block != nullptr) vkFreeMemory(device_, block->memory, nullptr);
  }
}

absl::StatusOr<std::pair<VkDeviceMemory, void*>> MemoryAllocator::AllocateMemory(
    uint32_t memory_type, uint64_t bytes) {
  VkMemoryAllocateInfo info{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
  info.allocationSize = bytes;
  info.memoryTypeIndex = memory_type;
  VkDeviceMemory memory = VK_NULL_HANDLE;
  const VkResult result = vkAllocateMemory(device_, &info, nullptr, &memory);
  if (result != VK_SUCCESS) {
    return VkStatus(result,
                    absl::StrCat("vkAllocateMemory(", bytes, " bytes, type ", memory_type, ")"));
  }
  void* mapped = nullptr;
  if (properties_.memoryTypes[memory_type].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) {
    const VkResult map_result = vkMapMemory(device_, memory, 0, VK_WHOLE_SIZE, 0, &mapped);
    if (map_result != VK_SUCCESS) {
      vkFreeMemory(device_, memory, nullptr);
      return VkStatus(map_result, "vkMapMemory");
    }
  }
  return std::make_pair(memory, mapped);
}

absl::StatusOr<Buffer> MemoryAllocator::Create(uint64_t bytes, MemoryKind kind) {
  if (bytes == 0) return absl::InvalidArgumentError("CreateBuffer: size must be > 0");
  // Shaders read buffers as 32-bit words, so the last word must be wholly inside the buffer.
  bytes = AlignUp(bytes, 4);
  VkBufferCreateInfo info{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
  info.size = bytes;
  // Every buffer may be bound as a storage buffer or a uniform texel buffer (the matrix kernels
  // read weights through texel views where that is faster; see docs/vulkan.md).
  info.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_UNIFORM_TEXEL_BUFFER_BIT |
               VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  info.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  VkBuffer handle = VK_NULL_HANDLE;
  DUET_VK_RETURN_IF_ERROR(vkCreateBuffer(device_, &info, nullptr, &handle));
  VkMemoryRequirements requirements;
  vkGetBufferMemoryRequirements(device_, handle, &requirements);
  const int type = FindMemoryType(properties_, requirements.memoryTypeBits, kind, unified_memory_);
  if (type < 0) {
    vkDestroyBuffer(device_, handle, nullptr);
    return absl::InternalError("CreateBuffer: no memory type fits the requested kind");
  }
  Buffer buffer;
  buffer.buffer_ = handle;
  buffer.size_ = bytes;
  buffer.kind_ = kind;
  buffer.memory_type_ = static_cast<uint32_t>(type);
  const uint64_t alignment = std::max<uint64_t>(requirements.alignment, buffer_alignment_);
  const uint64_t reserved = AlignUp(requirements.size, alignment);

  VkDeviceMemory memory = VK_NULL_HANDLE;
  void* base = nullptr;
  {
    absl::MutexLock lock(&mutex_);
    if (reserved > block_bytes_) {
      absl::StatusOr<std::pair<VkDeviceMemory, void*>> dedicated =
          AllocateMemory(buffer.memory_type_, requirements.size);
      if (!dedicated.ok()) {
        vkDestroyBuffer(device_, handle, nullptr);
        buffer.buffer_ = VK_NULL_HANDLE;
        return dedicated.status();
      }
      memory = dedicated->first;
      base = dedicated->second;
      buffer.dedicated_ = memory;
      buffer.block_bytes_ = requirements.size;
      dedicated_bytes_ += requirements.size;
    } else {
      int32_t chosen = -1;
      std::optional<uint64_t> offset;
      for (size_t b = 0; b < blocks_.size() && chosen < 0; ++b) {
        Block* block = blocks_[b].get();
        if (block == nullptr || block->memory_type != buffer.memory_type_) continue;
        offset = block->ranges.Allocate(reserved, alignment);
        if (offset.has_value()) chosen = static_cast<int32_t>(b);
      }
      if (chosen < 0) {
        absl::StatusOr<std::pair<VkDeviceMemory, void*>> fresh =
            AllocateMemory(buffer.memory_type_, block_bytes_);
        if (!fresh.ok()) {
          vkDestroyBuffer(device_, handle, nullptr);
          buffer.buffer_ = VK_NULL_HANDLE;
          return fresh.status();
        }
        auto block = std::make_unique<Block>(Block{buffer.memory_type_, fresh->first, fresh->second,
                                                   RangeAllocator(block_bytes_), 0});
        offset = block->ranges.Allocate(reserved, alignment);
        auto empty_slot = std::find(blocks_.begin(), blocks_.end(), nullptr);
        if (empty_slot != blocks_.end()) {
          *empty_slot = std::move(block);
          chosen = static_cast<int32_t>(empty_slot - blocks_.begin());
        } else {
          blocks_.push_back(std::move(block));
          chosen = static_cast<int32_t>(blocks_.size() - 1);
        }
      }
      Block* block = blocks_[static_cast<size_t>(chosen)].get();
      ++block->num_buffers;
      memory = block->memory;
      buffer.block_ = chosen;
      buffer.block_offset_ = *offset;
      buffer.block_bytes_ = reserved;
      if (block->mapped != nullptr) base = static_cast<char*>(block->mapped) + *offset;
    }
    used_bytes_ += buffer.block_bytes_;
    ++num_buffers_;
    if (base != nullptr) mapped_.emplace(handle, base);
  }
  buffer.allocator_ = this;  // from here on, Buffer's destructor returns the memory
  buffer.mapped_ = base;
  DUET_VK_RETURN_IF_ERROR(vkBindBufferMemory(device_, handle, memory, buffer.block_offset_));
  return buffer;
}

absl::StatusOr<VkBufferView> MemoryAllocator::TexelView(BufferView view, VkFormat format) {
  absl::MutexLock lock(&mutex_);
  std::map<TexelKey, VkBufferView>& views = texel_views_[view.buffer];
  const TexelKey key{view.offset, view.size, format};
  auto it = views.find(key);
  if (it != views.end()) return it->second;
  VkBufferViewCreateInfo info{VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO};
  info.buffer = view.buffer;
  info.format = format;
  info.offset = view.offset;
  info.range = view.size;
  VkBufferView handle = VK_NULL_HANDLE;
  DUET_VK_RETURN_IF_ERROR(vkCreateBufferView(device_, &info, nullptr, &handle));
  views.emplace(key, handle);
  return handle;
}

void MemoryAllocator::Free(Buffer& buffer) {
  {
    absl::MutexLock lock(&mutex_);
    auto views = texel_views_.find(buffer.buffer_);
    if (views != texel_views_.end()) {
      for (const auto& [key, handle] : views->second) vkDestroyBufferView(device_, handle, nullptr);
      texel_views_.erase(views);
    }
  }
  vkDestroyBuffer(device_, buffer.buffer_, nullptr);
  absl::MutexLock lock(&mutex_);
  mapped_.erase(buffer.buffer_);
  used_bytes_ -= buffer.block_bytes_;
  --num_buffers_;
  if (buffer.dedicated_ != VK_NULL_HANDLE) {
    vkFreeMemory(device_, buffer.dedicated_, nullptr);
    dedicated_bytes_ -= buffer.block_bytes_;
    buffer.dedicated_ = VK_NULL_HANDLE;
    return;
  }
  std::unique_ptr<Block>& block = blocks_[static_cast<size_t>(buffer.block_)];
  block->ranges.Free(buffer.block_offset_, buffer.block_bytes_);
  if (--block->num_buffers > 0) return;
  // Keep one empty block per memory type, so that a buffer created and freed every step does not
  // allocate a block every step; release any further empty block.
  for (const auto& other : blocks_) {
    if (other != nullptr && other != block && other->memory_type == block->memory_type &&
        other->num_buffers == 0) {
      vkFreeMemory(device_, block->memory, nullptr);
      block.reset();
      return;
    }
  }
}

void* MemoryAllocator::MappedPointer(VkBuffer buffer) const {
  absl::MutexLock lock(&mutex_);
  auto it = mapped_.find(buffer);
  return it == mapped_.end() ? nullptr : it->second;
}

MemoryStats MemoryAllocator::stats() const {
  absl::MutexLock lock(&mutex_);
  MemoryStats stats;
  stats.reserved_bytes = dedicated_bytes_;
  for (const auto& block : blocks_) {
    if (block == nullptr) continue;
    stats.reserved_bytes += block_bytes_;
    ++stats.num_blocks;
  }
  stats.used_bytes = used_bytes_;
  stats.num_buffers = num_buffers_;
  return stats;
}

}  // namespace duet::vk
