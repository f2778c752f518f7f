// Records many dispatches into one command buffer and submits them once (per step).
//
//   DUET_ASSIGN_OR_RETURN(auto cl, CommandList::Create(&device, {.profiling = true}));
//   DUET_RETURN_IF_ERROR(RecordRmsNorm(*cl, kernels, x, w, h, rows, n, eps));
//   DUET_RETURN_IF_ERROR(cl->Dispatch(*pipeline, {a, b, out}, push, Groups{num_groups}));
//   DUET_RETURN_IF_ERROR(cl->Submit());  // one vkQueueSubmit, waits on a fence
//   for (const KernelTiming& t : cl->ProfileReport()) ...
//
// Ordering: every command (dispatch, copy, fill) after the first is preceded by a global memory
// barrier (compute/transfer writes -> compute/transfer reads and writes), so commands see each
// other's results in recording order. The end of the buffer makes writes visible to the host.
// Descriptors: push descriptors when the device has them, else sets from a pool that is reset
// after each submission.
#ifndef DUET_COMMON_VK_COMMAND_LIST_H_
#define DUET_COMMON_VK_COMMAND_LIST_H_

#include <vulkan/vulkan.h>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/vk/buffer.h"
#include "common/vk/pipeline.h"

namespace duet::vk {

class Device;

// Workgroup counts of one dispatch.
struct Groups {
  uint32_t x = 1;
  uint32_t y = 1;
  uint32_t z = 1;
};

// `num_groups` workgroups as (x, y) with x <= max_x (the device's maxComputeWorkGroupCount[0],
// at least 65535), for shaders that linearize gl_WorkGroupID.y * gl_NumWorkGroups.x +
// gl_WorkGroupID.x and skip ids >= num_groups (x * y may exceed num_groups).
Groups Groups1D(uint64_t num_groups, uint32_t max_x = 65535);

// Per-kernel timing aggregated over the profiled submissions.
struct KernelTiming {
  std::string name;  // KernelName() of the pipeline
  int64_t count = 0;
  double total_us = 0.0;
  double mean_us = 0.0;
};

struct CommandListOptions {
  // Bracket every dispatch with timestamps (needs features().timestamps, else Create fails).
  bool profiling = false;
  // Dispatches profiled per submission; later ones in the same submission are not timed.
  uint32_t max_profiled_dispatches = 4096;
  // Descriptor sets per submission when push descriptors are unavailable; the pool grows when
  // it runs out, so this is only the first pool's size.
  uint32_t descriptor_sets_per_pool = 1024;
};

// Not thread-safe: one thread records and submits. REQUIRES: the Device outlives it, and the
// buffers and pipelines recorded stay alive until the submission has been waited for.
class CommandList {
 public:
  static absl::StatusOr<std::unique_ptr<CommandList>> Create(Device* device,
                                                             CommandListOptions options = {});
  CommandList(const CommandList&) = delete;
  CommandList& operator=(const CommandList&) = delete;
  ~CommandList();

  // Records one dispatch of `pipeline`, binding `buffers` to bindings 0.. in order (views past
  // pipeline.num_bindings() are validated but not bound) and pushing `push`.
  // INVALID_ARGUMENT (nothing recorded) when sizeof(PushConstants) != the shader's block size,
  // when buffers.size() < pipeline.num_bindings(), when a view is empty, misaligned or larger
  // than maxStorageBufferRange, or when a group count is 0 or above the device's limit.
  // FAILED_PRECONDITION while a submission is pending (call Wait first).
  template <typename PushConstants>
  absl::Status Dispatch(const Pipeline& pipeline, absl::Span<const BufferView> buffers,
                        const PushConstants& push, Groups groups) {
    static_assert(std::is_trivially_copyable_v<PushConstants>);
    static_assert(sizeof(PushConstants) <= kMaxPushConstantBytes);
    return DispatchRaw(pipeline, buffers, &push, static_cast<uint32_t>(sizeof(PushConstants)),
                       groups);
  }
  // Untyped form; push_bytes == 0 for a shader without push constants.
  absl::Status DispatchRaw(const Pipeline& pipeline, absl::Span<const BufferView> buffers,
                           const void* push, uint32_t push_bytes, Groups groups);

  // Copies src.size bytes to dst. REQUIRES src.size == dst.size (else INVALID_ARGUMENT).
  absl::Status Copy(BufferView src, BufferView dst);
  // Fills dst with a repeated 32-bit pattern (0 to clear, 0x7fc00000 for f32 NaN).
  // REQUIRES: dst.offset and dst.size multiples of 4 (else INVALID_ARGUMENT).
  absl::Status Fill(BufferView dst, uint32_t pattern);

  // Submits everything recorded since the last submission and waits for it. A no-op when
  // nothing was recorded. After it returns the list records afresh (descriptor pools reset).
  absl::Status Submit();
  // Two halves of Submit, to overlap CPU work with the GPU. Wait is a no-op with nothing pending.
  absl::Status SubmitAsync();
  absl::Status Wait();

  // Commands recorded since the last submission.
  int64_t num_recorded() const { return num_recorded_; }
  bool profiling() const { return options_.profiling; }

  // One row per kernel name, sorted by total time (descending), over all waited-for submissions
  // since creation or ResetProfile(). Empty without profiling.
  std::vector<KernelTiming> ProfileReport() const;
  void ResetProfile();

 private:
  explicit CommandList(Device* device, CommandListOptions options);
  absl::Status Init();
  absl::Status BeginIfNeeded();
  void RecordBarrier();
  absl::StatusOr<VkDescriptorSet> AllocateSet(VkDescriptorSetLayout layout);
  void ReadTimestamps();

  Device* device_;
  CommandListOptions options_;
  VkCommandPool command_pool_ = VK_NULL_HANDLE;
  VkCommandBuffer command_buffer_ = VK_NULL_HANDLE;
  VkFence fence_ = VK_NULL_HANDLE;
  VkQueryPool query_pool_ = VK_NULL_HANDLE;
  std::vector<VkDescriptorPool> descriptor_pools_;  // when push descriptors are unavailable
  size_t current_pool_ = 0;
  bool recording_ = false;
  bool pending_ = false;
  int64_t num_recorded_ = 0;
  // Kernel names of the dispatches timed in the current submission, in order.
  std::vector<KernelId> timed_;
  std::vector<KernelTiming> totals_;  // unsorted accumulators
};

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_COMMAND_LIST_H_
