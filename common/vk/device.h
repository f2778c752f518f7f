// The Vulkan instance, the chosen physical device, its compute queue and memory allocator.
//
// Selection: an explicit choice (DeviceOptions::device, else the DUET_VK_DEVICE environment
// variable) is a device index or a case-insensitive substring of its name; with no choice the
// first discrete GPU wins, then integrated, virtual, and CPU devices (lavapipe), in that order.
// Requires Vulkan 1.2 and a compute queue. Optional features (fp16 arithmetic, int8, 8/16-bit
// storage, push descriptors, timestamps) are enabled when present and reported in features().
#ifndef DUET_COMMON_VK_DEVICE_H_
#define DUET_COMMON_VK_DEVICE_H_

#include <vulkan/vulkan.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/vk/buffer.h"

namespace duet::vk {

enum class DeviceType { kDiscrete, kIntegrated, kVirtual, kCpu, kOther };
std::string_view DeviceTypeName(DeviceType type);  // "discrete", "integrated", ...

// A physical device as enumerated (index = position in vkEnumeratePhysicalDevices order).
struct DeviceInfo {
  int index = 0;
  std::string name;
  DeviceType type = DeviceType::kOther;
  uint32_t vendor_id = 0;
  uint32_t device_id = 0;
  uint32_t api_version = 0;  // VK_MAKE_API_VERSION
};

// Optional capabilities. As DeviceOptions::required: the features that must be present.
struct DeviceFeatures {
  bool shader_float16 = false;        // float16_t arithmetic in shaders
  bool shader_int8 = false;           // int8_t arithmetic in shaders
  bool storage_buffer_8bit = false;   // 8-bit types in storage buffers
  bool storage_buffer_16bit = false;  // 16-bit types in storage buffers
  bool subgroup_arithmetic = false;   // subgroupAdd/Max/... in compute shaders
  bool push_descriptors = false;      // VK_KHR_push_descriptor
  bool timestamps = false;            // compute-queue timestamps (profiling)
};

// Limits that kernels and the host code size themselves by.
struct DeviceLimits {
  uint64_t max_storage_buffer_range = 0;  // bytes one bound view may span
  // Bytes; bound views must start at multiples. At least 4 (raised to 4 where the device says
  // less) so that every bound view starts on a 32-bit word.
  uint64_t min_storage_buffer_offset_alignment = 4;
  // Uniform texel buffer views (4 x 32-bit texels): offsets in bytes must be multiples of
  // min_texel_buffer_offset_alignment, and a view holds at most max_texel_buffer_elements texels.
  uint64_t min_texel_buffer_offset_alignment = 16;
  uint64_t max_texel_buffer_elements = 0;
  uint64_t max_memory_allocation_bytes = 0;
  uint32_t max_shared_memory_bytes = 0;  // maxComputeSharedMemorySize
  uint32_t max_push_constant_bytes = 0;
  uint32_t subgroup_size = 0;
  uint32_t max_workgroup_invocations = 0;
  std::array<uint32_t, 3> max_workgroup_size = {0, 0, 0};
  std::array<uint32_t, 3> max_workgroup_count = {0, 0, 0};
  double timestamp_period_ns = 0.0;  // nanoseconds per timestamp tick
  // The device-local heap is host-visible (integrated GPUs, CPU devices): kDevice buffers are
  // mapped and uploads are memcpys.
  bool unified_memory = false;
};

// The most worker threads DeviceOptions::cpu_threads may ask a CPU driver for.
inline constexpr int kMaxCpuThreads = 256;

struct DeviceOptions {
  // "" = use DUET_VK_DEVICE when set, else automatic. Otherwise an index ("1") or a
  // case-insensitive name substring ("llvmpipe", "rtx").
  std::string device;
  // Features the caller cannot run without; Create fails naming the first one missing.
  DeviceFeatures required;
  // false forces descriptor sets from pools even when VK_KHR_push_descriptor exists.
  bool use_push_descriptors = true;
  // Size of the memory blocks buffers are sub-allocated from.
  uint64_t block_bytes = uint64_t{256} << 20;
  // > 0: limits().max_storage_buffer_range is capped at this (tests of tensor splitting).
  uint64_t max_storage_buffer_range_override = 0;
  // Enables VK_LAYER_KHRONOS_validation when installed (messages go to stderr).
  bool validation = false;
  // CPU drivers (Mesa's lavapipe): worker threads that run a dispatch's workgroups; 0 runs
  // every dispatch on the submitting thread, with no hand-off. -1 = the driver's default (one
  // per core, or LP_NUM_THREADS). Each dispatch wakes and waits for the workers, which on a
  // small model costs more than its arithmetic (docs/performance.md). Set through the
  // LP_NUM_THREADS environment variable before the instance is created, so it applies to the
  // devices created after it in this process; GPU drivers ignore it.
  int cpu_threads = -1;
};

// Picks a device from `devices` for `choice` (see the file comment; "" = automatic).
// NOT_FOUND when `devices` is empty ("no Vulkan device") or when `choice` matches none (the
// message lists every device as "index: name (type)").
absl::StatusOr<int> SelectDevice(absl::Span<const DeviceInfo> devices, std::string_view choice);

// OK when `have` has every feature set in `required`; else FAILED_PRECONDITION naming the
// first missing feature by its Vulkan name (e.g. "storageBuffer16BitAccess") and the device.
absl::Status CheckFeatures(const DeviceFeatures& have, const DeviceFeatures& required,
                           std::string_view device_name);

// Memory usage of one device, in bytes.
struct MemoryStats {
  uint64_t reserved_bytes = 0;  // VkDeviceMemory held (blocks + dedicated allocations)
  uint64_t used_bytes = 0;      // handed out to live buffers (aligned sizes)
  int64_t num_blocks = 0;
  int64_t num_buffers = 0;
};

// Owns the VkInstance and VkDevice. Thread-safe: CreateBuffer, Upload, Download and QueueSubmit
// may be called from several threads. Every Buffer, Kernels and CommandList made from a Device
// must be destroyed before it.
class Device {
 public:
  // Lists the physical devices. NOT_FOUND when the loader or driver offers none.
  static absl::StatusOr<std::vector<DeviceInfo>> Enumerate();
  // Creates the instance, selects a device (see SelectDevice), checks options.required.
  static absl::StatusOr<std::unique_ptr<Device>> Create(const DeviceOptions& options = {});

  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device();

  const DeviceInfo& info() const { return info_; }
  const DeviceLimits& limits() const { return limits_; }
  const DeviceFeatures& features() const { return features_; }
  // Push descriptors are present and not disabled by the options.
  bool uses_push_descriptors() const { return use_push_descriptors_; }

  VkInstance instance() const { return instance_; }
  VkPhysicalDevice physical_device() const { return physical_device_; }
  VkDevice device() const { return device_; }
  uint32_t queue_family() const { return queue_family_; }

  // A buffer of `bytes` (> 0) bytes, usable as a storage buffer and a transfer source and
  // destination. RESOURCE_EXHAUSTED when memory runs out; INVALID_ARGUMENT for bytes == 0.
  absl::StatusOr<Buffer> CreateBuffer(uint64_t bytes, MemoryKind kind = MemoryKind::kDevice);

  // Copies dst.size bytes from `src` into `dst` / src.size bytes of `src` into `dst`, and
  // returns when the copy is complete: a memcpy for mapped buffers, else staged through a
  // host-visible buffer and a queue submission. REQUIRES: the GPU is not using the range.
  absl::Status Upload(BufferView dst, const void* src);
  // A VkBufferView of `view` in `format` for a uniform texel buffer binding, created on first use
  // and cached until the buffer is destroyed. INVALID_ARGUMENT when the view breaks the texel
  // limits (offset alignment, size a multiple of 16, element count).
  absl::StatusOr<VkBufferView> TexelView(BufferView view, VkFormat format);
  absl::Status Download(BufferView src, void* dst);

  // vkQueueSubmit under the queue lock (Vulkan requires external synchronization).
  absl::Status QueueSubmit(const VkSubmitInfo& submit, VkFence fence);

  MemoryStats memory_stats() const;

  // Loaded when the device has VK_KHR_push_descriptor, else null.
  PFN_vkCmdPushDescriptorSetKHR push_descriptor_fn() const { return push_descriptor_fn_; }

 private:
  Device() = default;
  absl::Status Init(const DeviceOptions& options);
  // Records `copy` into a one-off command buffer, submits it and waits.
  absl::Status RunCopy(VkBuffer src, VkBuffer dst, const VkBufferCopy& copy);

  VkInstance instance_ = VK_NULL_HANDLE;
  VkPhysicalDevice physical_device_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  uint32_t queue_family_ = 0;
  DeviceInfo info_;
  DeviceLimits limits_;
  DeviceFeatures features_;
  bool use_push_descriptors_ = false;
  PFN_vkCmdPushDescriptorSetKHR push_descriptor_fn_ = nullptr;
  std::unique_ptr<MemoryAllocator> allocator_;

  mutable absl::Mutex queue_mutex_;
  // One-off transfers for Upload/Download (guarded by transfer_mutex_).
  absl::Mutex transfer_mutex_;
  VkCommandPool transfer_pool_ ABSL_GUARDED_BY(transfer_mutex_) = VK_NULL_HANDLE;
  VkFence transfer_fence_ ABSL_GUARDED_BY(transfer_mutex_) = VK_NULL_HANDLE;
};

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_DEVICE_H_
