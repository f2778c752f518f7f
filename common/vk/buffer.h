// Device buffers, byte ranges of them (BufferView), and splitting tensors that are larger than
// the device's maxStorageBufferRange into row-aligned views.
//
// Memory model (see docs/vulkan.md): buffers are sub-allocated from a few large VkDeviceMemory
// blocks per memory type (256 MiB by default; larger buffers get a dedicated allocation). Each
// Buffer is its own VkBuffer bound at an offset inside a block, so a Buffer's views start at 0.
// Host-visible buffers are persistently mapped (Buffer::mapped() != nullptr).
#ifndef DUET_COMMON_VK_BUFFER_H_
#define DUET_COMMON_VK_BUFFER_H_

#include <vulkan/vulkan.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace duet::vk {

class MemoryAllocator;

// Where a buffer lives.
enum class MemoryKind {
  // Device-local. On unified-memory devices (integrated GPUs, lavapipe: the device-local heap is
  // host-visible) it is also host-visible and coherent, mapped, and Device::Upload is a memcpy;
  // on discrete GPUs uploads go through a staging buffer.
  kDevice,
  // Host-visible and coherent, mapped: staging for uploads, small per-step inputs written by the
  // CPU (token ids, positions). Readable by shaders, but slow for large data on discrete GPUs.
  kUpload,
  // Host-visible, cached where the device offers it, mapped: results the CPU reads back.
  kReadback,
};

// A byte range of a buffer, what a kernel binds. Plain value; does not own the buffer.
// A view bound to a shader must have offset % limits().min_storage_buffer_offset_alignment == 0
// and size <= limits().max_storage_buffer_range (CommandList::Dispatch checks both).
struct BufferView {
  VkBuffer buffer = VK_NULL_HANDLE;
  uint64_t offset = 0;  // bytes from the start of `buffer`
  uint64_t size = 0;    // bytes

  bool empty() const { return size == 0; }
  // The sub-range [offset, offset + size) of this view. Crashes when it does not fit.
  BufferView Sub(uint64_t sub_offset, uint64_t sub_size) const;
};

// A device buffer: one VkBuffer bound to a sub-allocation. Move-only; the destructor returns the
// memory to its allocator. REQUIRES: destroyed before its Device, and only once the GPU no longer
// uses it (after the submission that used it has been waited for).
class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  VkBuffer handle() const { return buffer_; }
  // Bytes: the requested size rounded up to a multiple of 4 (shaders read 32-bit words).
  uint64_t size() const { return size_; }
  MemoryKind kind() const { return kind_; }
  // Persistent mapping of the whole buffer, or nullptr when it is not host-visible.
  void* mapped() const { return mapped_; }
  bool host_visible() const { return mapped_ != nullptr; }

  // The whole buffer, or [offset, offset + size) of it (crashes when out of range).
  BufferView view() const { return BufferView{buffer_, 0, size_}; }
  BufferView view(uint64_t offset, uint64_t size) const { return view().Sub(offset, size); }

 private:
  friend class MemoryAllocator;
  void Release();

  MemoryAllocator* allocator_ = nullptr;
  VkBuffer buffer_ = VK_NULL_HANDLE;
  uint64_t size_ = 0;
  MemoryKind kind_ = MemoryKind::kDevice;
  void* mapped_ = nullptr;
  // Where the memory came from (opaque to users).
  uint32_t memory_type_ = 0;
  int32_t block_ = -1;  // index in the allocator's block list; -1 for a dedicated allocation
  uint64_t block_offset_ = 0;
  uint64_t block_bytes_ = 0;  // bytes reserved in the block (aligned)
  VkDeviceMemory dedicated_ = VK_NULL_HANDLE;
};

// One piece of a [rows, row_bytes] tensor: rows [first_row, first_row + num_rows) as a view.
struct RowChunk {
  BufferView view;
  int64_t first_row = 0;
  int64_t num_rows = 0;
};

// The most rows of `row_bytes` bytes a chunk may hold so that it spans <= max_range bytes and
// rows_per_chunk * row_bytes is a multiple of offset_alignment (consecutive chunks of an aligned
// tensor stay aligned). INVALID_ARGUMENT when row_bytes <= 0 or no such count >= 1 exists.
// REQUIRES: offset_alignment is a power of two.
absl::StatusOr<int64_t> RowsPerChunk(int64_t row_bytes, uint64_t max_range,
                                     uint64_t offset_alignment);

// Splits `tensor` ([rows, row_bytes], row-major, starting at tensor.offset) into consecutive
// row-aligned chunks, each at most `max_range` bytes and, when tensor.offset is a multiple of
// `offset_alignment`, each starting at a multiple of it (so every chunk can be bound). One chunk
// when the whole tensor fits. INVALID_ARGUMENT when tensor.size < rows * row_bytes, when a single
// row is larger than max_range, or when no whole number of rows both fits and keeps alignment.
// REQUIRES: offset_alignment is a power of two.
absl::StatusOr<std::vector<RowChunk>> SplitRows(BufferView tensor, int64_t rows, int64_t row_bytes,
                                                uint64_t max_range, uint64_t offset_alignment);

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_BUFFER_H_
