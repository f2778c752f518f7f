#include "common/vk/command_list.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/vk/device.h"
#include "common/vk/vk_status.h"

namespace duet::vk {
namespace {

constexpr VkAccessFlags kAllWrites = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
constexpr VkAccessFlags kAllAccesses = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                       VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
constexpr VkPipelineStageFlags kWorkStages =
    VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
// Storage descriptors reserved per set in a fallback pool.
constexpr uint32_t kDescriptorsPerSet = 8;

}  // namespace

Groups Groups1D(uint64_t num_groups, uint32_t max_x) {
  if (num_groups <= max_x) return Groups{static_cast<uint32_t>(std::max<uint64_t>(num_groups, 1))};
  const uint64_t y = (num_groups + max_x - 1) / max_x;
  return Groups{max_x, static_cast<uint32_t>(y), 1};
}

CommandList::CommandList(Device* device, CommandListOptions options)
    : device_(device), options_(options) {}

absl::StatusOr<std::unique_ptr<CommandList>> CommandList::Create(Device* device,
                                                                 CommandListOptions options) {
  if (options.profiling && !device->features().timestamps) {
    return absl::FailedPreconditionError(
        absl::StrCat("profiling needs timestamp queries, which Vulkan device '",
                     device->info().name, "' lacks on its compute queue"));
  }
  std::unique_ptr<CommandList> list(new CommandList(device, options));
  DUET_RETURN_IF_ERROR(list->Init());
  return list;
}

absl::Status CommandList::Init() {
  const VkDevice dev = device_->device();
  VkCommandPoolCreateInfo pool_info{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  pool_info.queueFamilyIndex = device_->queue_family();
  DUET_VK_RETURN_IF_ERROR(vkCreateCommandPool(dev, &pool_info, nullptr, &command_pool_));
  VkCommandBufferAllocateInfo alloc{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
  alloc.commandPool = command_pool_;
  alloc.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  alloc.commandBufferCount = 1;
  DUET_VK_RETURN_IF_ERROR(vkAllocateCommandBuffers(dev, &alloc, &command_buffer_));
  VkFenceCreateInfo fence_info{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  DUET_VK_RETURN_IF_ERROR(vkCreateFence(dev, &fence_info, nullptr, &fence_));
  if (options_.profiling) {
    VkQueryPoolCreateInfo query_info{VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
    query_info.queryType = VK_QUERY_TYPE_TIMESTAMP;
    query_info.queryCount = 2 * std::max<uint32_t>(options_.max_profiled_dispatches, 1);
    DUET_VK_RETURN_IF_ERROR(vkCreateQueryPool(dev, &query_info, nullptr, &query_pool_));
  }
  return absl::OkStatus();
}

CommandList::~CommandList() {
  const VkDevice dev = device_->device();
  if (pending_) vkWaitForFences(dev, 1, &fence_, VK_TRUE, UINT64_MAX);
  for (VkDescriptorPool pool : descriptor_pools_) vkDestroyDescriptorPool(dev, pool, nullptr);
  if (query_pool_ != VK_NULL_HANDLE) vkDestroyQueryPool(dev, query_pool_, nullptr);
  if (fence_ != VK_NULL_HANDLE) vkDestroyFence(dev, fence_, nullptr);
  if (command_pool_ != VK_NULL_HANDLE) vkDestroyCommandPool(dev, command_pool_, nullptr);
}

absl::Status CommandList::BeginIfNeeded() {
  if (pending_) {
    return absl::FailedPreconditionError("CommandList: a submission is pending; call Wait()");
  }
  if (recording_) return absl::OkStatus();
  VkCommandBufferBeginInfo begin{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  DUET_VK_RETURN_IF_ERROR(vkBeginCommandBuffer(command_buffer_, &begin));
  if (query_pool_ != VK_NULL_HANDLE) {
    vkCmdResetQueryPool(command_buffer_, query_pool_, 0, 2 * options_.max_profiled_dispatches);
  }
  recording_ = true;
  return absl::OkStatus();
}

void CommandList::RecordBarrier() {
  if (num_recorded_ == 0) return;
  VkMemoryBarrier barrier{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
  barrier.srcAccessMask = kAllWrites;
  barrier.dstAccessMask = kAllAccesses;
  vkCmdPipelineBarrier(command_buffer_, kWorkStages, kWorkStages, 0, 1, &barrier, 0, nullptr, 0,
                       nullptr);
}

absl::StatusOr<VkDescriptorSet> CommandList::AllocateSet(VkDescriptorSetLayout layout) {
  const VkDevice dev = device_->device();
  for (;;) {
    if (current_pool_ == descriptor_pools_.size()) {
      const uint32_t sets = std::max<uint32_t>(options_.descriptor_sets_per_pool, 16);
      const VkDescriptorPoolSize sizes[2] = {
          {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, sets * kDescriptorsPerSet},
          {VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER, sets * kDescriptorsPerSet}};
      VkDescriptorPoolCreateInfo info{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
      info.maxSets = sets;
      info.poolSizeCount = 2;
      info.pPoolSizes = sizes;
      VkDescriptorPool pool = VK_NULL_HANDLE;
      DUET_VK_RETURN_IF_ERROR(vkCreateDescriptorPool(dev, &info, nullptr, &pool));
      descriptor_pools_.push_back(pool);
    }
    VkDescriptorSetAllocateInfo alloc{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
    alloc.descriptorPool = descriptor_pools_[current_pool_];
    alloc.descriptorSetCount = 1;
    alloc.pSetLayouts = &layout;
    VkDescriptorSet set = VK_NULL_HANDLE;
    const VkResult result = vkAllocateDescriptorSets(dev, &alloc, &set);
    if (result == VK_SUCCESS) return set;
    if (result != VK_ERROR_OUT_OF_POOL_MEMORY && result != VK_ERROR_FRAGMENTED_POOL) {
      return VkStatus(result, "vkAllocateDescriptorSets");
    }
    ++current_pool_;  // this pool is full: move on to the next (created on demand)
  }
}

absl::Status CommandList::DispatchRaw(const Pipeline& pipeline,
                                      absl::Span<const BufferView> buffers, const void* push,
                                      uint32_t push_bytes, Groups groups) {
  const std::string_view name = pipeline.name();
  if (push_bytes != pipeline.push_constant_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("Dispatch ", std::string(name), ": ", push_bytes,
                                                   " bytes of push constants, the shader's "
                                                   "block is ",
                                                   pipeline.push_constant_bytes(), " bytes"));
  }
  if (buffers.size() < pipeline.num_bindings()) {
    return absl::InvalidArgumentError(absl::StrCat("Dispatch ", std::string(name), ": ",
                                                   buffers.size(), " buffers for ",
                                                   pipeline.num_bindings(), " bindings"));
  }
  const DeviceLimits& limits = device_->limits();
  for (size_t i = 0; i < buffers.size(); ++i) {
    const BufferView& v = buffers[i];
    if (v.buffer == VK_NULL_HANDLE || v.size == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Dispatch ", std::string(name), ": binding ", i, " is empty"));
    }
    if (v.offset % limits.min_storage_buffer_offset_alignment != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Dispatch ", std::string(name), ": binding ", i, " offset ", v.offset,
                       " is not a multiple of ", limits.min_storage_buffer_offset_alignment));
    }
    if (v.size > limits.max_storage_buffer_range) {
      return absl::InvalidArgumentError(
          absl::StrCat("Dispatch ", std::string(name), ": binding ", i, " spans ", v.size,
                       " bytes, more than maxStorageBufferRange ", limits.max_storage_buffer_range,
                       " (split it with SplitRows)"));
    }
  }
  const uint32_t counts[3] = {groups.x, groups.y, groups.z};
  for (size_t d = 0; d < 3; ++d) {
    if (counts[d] == 0 || counts[d] > limits.max_workgroup_count[d]) {
      return absl::InvalidArgumentError(
          absl::StrCat("Dispatch ", std::string(name), ": group count ", counts[d],
                       " in dimension ", d, " outside [1, ", limits.max_workgroup_count[d], "]"));
    }
  }
  DUET_RETURN_IF_ERROR(BeginIfNeeded());
  RecordBarrier();
  // Views past the bindings the SPIR-V kept (see Pipeline::num_bindings) are not bound.
  buffers = buffers.subspan(0, pipeline.num_bindings());

  VkCommandBuffer cb = command_buffer_;
  vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline.handle());
  std::vector<VkDescriptorBufferInfo> infos(buffers.size());
  std::vector<VkBufferView> texel_views(buffers.size(), VK_NULL_HANDLE);
  std::vector<VkWriteDescriptorSet> writes(buffers.size());
  VkDescriptorSet set = VK_NULL_HANDLE;
  if (!device_->uses_push_descriptors() && !buffers.empty()) {
    DUET_ASSIGN_OR_RETURN(set, AllocateSet(pipeline.set_layout()));
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    infos[i] = VkDescriptorBufferInfo{buffers[i].buffer, buffers[i].offset, buffers[i].size};
    writes[i] = VkWriteDescriptorSet{VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
    writes[i].dstSet = set;
    writes[i].dstBinding = static_cast<uint32_t>(i);
    writes[i].descriptorCount = 1;
    writes[i].descriptorType = pipeline.binding_type(static_cast<uint32_t>(i));
    if (writes[i].descriptorType == VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER) {
      // A texel binding covers the view's whole 16-byte texels (a shader cannot fetch a part).
      BufferView whole = buffers[i];
      whole.size -= whole.size % 16;
      if (whole.size == 0) {
        return absl::InvalidArgumentError(absl::StrCat("Dispatch ", std::string(name), ": binding ",
                                                       i, " holds no whole 16-byte texel"));
      }
      absl::StatusOr<VkBufferView> texel =
          device_->TexelView(whole, pipeline.texel_format(static_cast<uint32_t>(i)));
      if (!texel.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("Dispatch ", std::string(name), ": binding ",
                                                       i, ": ", texel.status().message()));
      }
      texel_views[i] = *texel;
      writes[i].pTexelBufferView = &texel_views[i];
    } else {
      writes[i].pBufferInfo = &infos[i];
    }
  }
  if (!buffers.empty()) {
    if (device_->uses_push_descriptors()) {
      device_->push_descriptor_fn()(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline.layout(), 0,
                                    static_cast<uint32_t>(writes.size()), writes.data());
    } else {
      vkUpdateDescriptorSets(device_->device(), static_cast<uint32_t>(writes.size()), writes.data(),
                             0, nullptr);
      vkCmdBindDescriptorSets(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline.layout(), 0, 1, &set, 0,
                              nullptr);
    }
  }
  if (push_bytes > 0) {
    vkCmdPushConstants(cb, pipeline.layout(), VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
  }
  const bool timed =
      query_pool_ != VK_NULL_HANDLE && timed_.size() < options_.max_profiled_dispatches;
  const uint32_t query = static_cast<uint32_t>(2 * timed_.size());
  if (timed) {
    vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, query_pool_, query);
  }
  vkCmdDispatch(cb, groups.x, groups.y, groups.z);
  if (timed) {
    vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, query_pool_, query + 1);
    timed_.push_back(pipeline.id());
  }
  ++num_recorded_;
  return absl::OkStatus();
}

absl::Status CommandList::Copy(BufferView src, BufferView dst) {
  if (src.size != dst.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("Copy: source is ", src.size, " bytes, destination ", dst.size));
  }
  if (src.size == 0) return absl::OkStatus();
  DUET_RETURN_IF_ERROR(BeginIfNeeded());
  RecordBarrier();
  const VkBufferCopy region{src.offset, dst.offset, src.size};
  vkCmdCopyBuffer(command_buffer_, src.buffer, dst.buffer, 1, &region);
  ++num_recorded_;
  return absl::OkStatus();
}

absl::Status CommandList::Fill(BufferView dst, uint32_t pattern) {
  if (dst.offset % 4 != 0 || dst.size % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Fill: offset ", dst.offset, " and size ",
                                                   dst.size, " must be multiples of 4"));
  }
  if (dst.size == 0) return absl::OkStatus();
  DUET_RETURN_IF_ERROR(BeginIfNeeded());
  RecordBarrier();
  vkCmdFillBuffer(command_buffer_, dst.buffer, dst.offset, dst.size, pattern);
  ++num_recorded_;
  return absl::OkStatus();
}

absl::Status CommandList::Submit() {
  DUET_RETURN_IF_ERROR(SubmitAsync());
  return Wait();
}

absl::Status CommandList::SubmitAsync() {
  if (pending_) {
    return absl::FailedPreconditionError("CommandList: a submission is pending; call Wait()");
  }
  if (!recording_) return absl::OkStatus();
  // Everything written becomes visible to the host once the fence signals.
  VkMemoryBarrier barrier{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
  barrier.srcAccessMask = kAllWrites;
  barrier.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
  vkCmdPipelineBarrier(command_buffer_, kWorkStages, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &barrier, 0,
                       nullptr, 0, nullptr);
  recording_ = false;
  DUET_VK_RETURN_IF_ERROR(vkEndCommandBuffer(command_buffer_));
  VkSubmitInfo submit{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  submit.commandBufferCount = 1;
  submit.pCommandBuffers = &command_buffer_;
  absl::Status status = device_->QueueSubmit(submit, fence_);
  if (!status.ok()) {
    // Drop what was recorded so the list stays usable.
    vkResetCommandPool(device_->device(), command_pool_, 0);
    num_recorded_ = 0;
    timed_.clear();
    return status;
  }
  pending_ = true;
  return absl::OkStatus();
}

absl::Status CommandList::Wait() {
  if (!pending_) return absl::OkStatus();
  const VkDevice dev = device_->device();
  const VkResult result = vkWaitForFences(dev, 1, &fence_, VK_TRUE, UINT64_MAX);
  pending_ = false;
  if (result == VK_SUCCESS) ReadTimestamps();
  timed_.clear();
  vkResetFences(dev, 1, &fence_);
  vkResetCommandPool(dev, command_pool_, 0);
  for (VkDescriptorPool pool : descriptor_pools_) vkResetDescriptorPool(dev, pool, 0);
  current_pool_ = 0;
  num_recorded_ = 0;
  return VkStatus(result, "vkWaitForFences");
}

void CommandList::ReadTimestamps() {
  if (timed_.empty()) return;
  std::vector<uint64_t> ticks(2 * timed_.size());
  const VkResult result =
      vkGetQueryPoolResults(device_->device(), query_pool_, 0, static_cast<uint32_t>(ticks.size()),
                            ticks.size() * sizeof(uint64_t), ticks.data(), sizeof(uint64_t),
                            VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT);
  if (result != VK_SUCCESS) return;
  const double us_per_tick = device_->limits().timestamp_period_ns / 1000.0;
  for (size_t i = 0; i < timed_.size(); ++i) {
    const uint64_t begin = ticks[2 * i];
    const uint64_t end = ticks[2 * i + 1];
    const double us = end >= begin ? static_cast<double>(end - begin) * us_per_tick : 0.0;
    const std::string_view name = KernelName(timed_[i]);
    auto it = std::find_if(totals_.begin(), totals_.end(),
                           [&](const KernelTiming& t) { return t.name == name; });
    if (it == totals_.end()) {
      totals_.push_back(KernelTiming{std::string(name), 0, 0.0, 0.0});
      it = totals_.end() - 1;
    }
    ++it->count;
    it->total_us += us;
  }
}

std::vector<KernelTiming> CommandList::ProfileReport() const {
  std::vector<KernelTiming> report = totals_;
  for (KernelTiming& t : report) t.mean_us = t.count > 0 ? t.total_us / t.count : 0.0;
  std::sort(report.begin(), report.end(), [](const KernelTiming& a, const KernelTiming& b) {
    return a.total_us != b.total_us ? a.total_us > b.total_us : a.name < b.name;
  });
  return report;
}

void CommandList::ResetProfile() { totals_.clear(); }

}  // namespace duet::vk
