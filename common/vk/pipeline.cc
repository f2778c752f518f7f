#include "common/vk/pipeline.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/vk/device.h"
#include "common/vk/spirv_reflect.h"
#include "common/vk/vk_status.h"

namespace duet::vk {

std::string_view KernelName(KernelId id) {
  const auto index = static_cast<size_t>(id);
  if (index >= static_cast<size_t>(kNumKernels)) return "<unknown kernel>";
  return internal::kEmbeddedSpirv[index].name;
}

absl::StatusOr<KernelId> FindKernel(std::string_view name) {
  for (int i = 0; i < kNumKernels; ++i) {
    if (name == internal::kEmbeddedSpirv[i].name) return static_cast<KernelId>(i);
  }
  return absl::NotFoundError(
      absl::StrCat("no kernel named '", std::string(name), "' in shaders/kernels.table"));
}

absl::Span<const uint32_t> KernelSpirv(KernelId id) {
  const internal::EmbeddedSpirv& e = internal::kEmbeddedSpirv[static_cast<size_t>(id)];
  return absl::MakeConstSpan(e.words, e.num_words);
}

Pipeline::~Pipeline() {
  if (pipeline_ != VK_NULL_HANDLE) vkDestroyPipeline(device_, pipeline_, nullptr);
  if (layout_ != VK_NULL_HANDLE) vkDestroyPipelineLayout(device_, layout_, nullptr);
  if (set_layout_ != VK_NULL_HANDLE) vkDestroyDescriptorSetLayout(device_, set_layout_, nullptr);
  if (module_ != VK_NULL_HANDLE) vkDestroyShaderModule(device_, module_, nullptr);
}

Kernels::Kernels(Device* device) : device_(device) {}

Kernels::~Kernels() = default;

int64_t Kernels::size() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int64_t>(cache_.size());
}

absl::StatusOr<const Pipeline*> Kernels::Get(KernelId id, absl::Span<const uint32_t> spec_constants,
                                             uint32_t push_constant_bytes) const {
  if (static_cast<int>(id) < 0 || static_cast<int>(id) >= kNumKernels) {
    return absl::InvalidArgumentError(absl::StrCat("unknown KernelId ", static_cast<int>(id)));
  }
  Key key(id, std::vector<uint32_t>(spec_constants.begin(), spec_constants.end()));
  absl::MutexLock lock(&mutex_);
  auto it = cache_.find(key);
  if (it == cache_.end()) {
    // Created under the lock: creation is rare (once per variant) and this keeps it simple.
    DUET_ASSIGN_OR_RETURN(std::unique_ptr<Pipeline> created, Create(id, spec_constants));
    it = cache_.emplace(std::move(key), std::move(created)).first;
  }
  const Pipeline* pipeline = it->second.get();
  if (pipeline->push_constant_bytes() != push_constant_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("kernel ", std::string(KernelName(id)), ": the host passes ",
                     push_constant_bytes, " bytes of push constants, the shader's block is ",
                     pipeline->push_constant_bytes(), " bytes"));
  }
  return pipeline;
}

absl::StatusOr<std::unique_ptr<Pipeline>> Kernels::Create(
    KernelId id, absl::Span<const uint32_t> spec_constants) const {
  const std::string name(KernelName(id));
  const absl::Span<const uint32_t> spirv = KernelSpirv(id);
  absl::StatusOr<SpirvInterface> reflected = ReflectSpirv(spirv);
  if (!reflected.ok()) {
    return absl::InternalError(
        absl::StrCat("kernel ", name, ": ", std::string(reflected.status().message())));
  }
  const SpirvInterface& iface = *reflected;
  if (iface.has_other_descriptors) {
    return absl::InternalError(
        absl::StrCat("kernel ", name,
                     ": only storage and uniform texel buffers in descriptor set 0 are supported"));
  }
  for (size_t i = 0; i < spec_constants.size(); ++i) {
    if (!std::binary_search(iface.spec_ids.begin(), iface.spec_ids.end(),
                            static_cast<uint32_t>(i))) {
      return absl::InvalidArgumentError(absl::StrCat("kernel ", name, ": ", spec_constants.size(),
                                                     " specialization constants given, the "
                                                     "shader declares no constant_id ",
                                                     i));
    }
  }
  if (iface.push_constant_bytes > kMaxPushConstantBytes) {
    return absl::InternalError(absl::StrCat("kernel ", name, ": push-constant block of ",
                                            iface.push_constant_bytes, " bytes exceeds 128"));
  }

  const VkDevice vk_device = device_->device();
  auto pipeline = std::unique_ptr<Pipeline>(new Pipeline(vk_device));
  pipeline->id_ = id;
  pipeline->spec_constants_.assign(spec_constants.begin(), spec_constants.end());
  pipeline->push_constant_bytes_ = iface.push_constant_bytes;
  // Bindings 0..max: glslc -O drops bindings a variant never uses, leaving gaps; declaring them
  // anyway keeps the host's binding numbers the same for every variant.
  uint32_t num_bindings = 0;
  for (uint32_t b : iface.storage_buffer_bindings) num_bindings = std::max(num_bindings, b + 1);
  for (const auto& [b, component] : iface.texel_buffer_bindings) {
    num_bindings = std::max(num_bindings, b + 1);
  }
  pipeline->num_bindings_ = num_bindings;
  pipeline->binding_types_.assign(num_bindings, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER);
  pipeline->texel_formats_.assign(num_bindings, VK_FORMAT_UNDEFINED);
  for (const auto& [b, component] : iface.texel_buffer_bindings) {
    pipeline->binding_types_[b] = VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER;
    pipeline->texel_formats_[b] =
        component == SpirvInterface::TexelComponent::kFloat  ? VK_FORMAT_R32G32B32A32_SFLOAT
        : component == SpirvInterface::TexelComponent::kUint ? VK_FORMAT_R32G32B32A32_UINT
                                                             : VK_FORMAT_R32G32B32A32_SINT;
  }
  // Every declared spec id is specialized explicitly: the caller's value, else the shader's
  // declared default (see SpirvInterface::spec_defaults), so that a local size tied to a
  // constant_id always equals that constant.
  std::vector<uint32_t> spec_data;
  std::vector<VkSpecializationMapEntry> entries;
  for (const auto& [spec_id, default_value] : iface.spec_defaults) {
    const uint32_t value =
        spec_id < spec_constants.size() ? spec_constants[spec_id] : default_value;
    entries.push_back(VkSpecializationMapEntry{
        spec_id, static_cast<uint32_t>(spec_data.size() * sizeof(uint32_t)), sizeof(uint32_t)});
    spec_data.push_back(value);
  }
  pipeline->local_size_ = iface.local_size;
  for (size_t d = 0; d < 3; ++d) {
    const int32_t spec = iface.local_size_spec_ids[d];
    if (spec < 0) continue;
    for (const VkSpecializationMapEntry& e : entries) {
      if (e.constantID == static_cast<uint32_t>(spec)) {
        pipeline->local_size_[d] = spec_data[e.offset / sizeof(uint32_t)];
      }
    }
  }
  const DeviceLimits& limits = device_->limits();
  const uint64_t invocations =
      uint64_t{pipeline->local_size_[0]} * pipeline->local_size_[1] * pipeline->local_size_[2];
  if (invocations > limits.max_workgroup_invocations) {
    return absl::InvalidArgumentError(absl::StrCat("kernel ", name, ": workgroup of ", invocations,
                                                   " invocations exceeds the device's ",
                                                   limits.max_workgroup_invocations));
  }

  VkShaderModuleCreateInfo module_info{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
  module_info.codeSize = spirv.size() * sizeof(uint32_t);
  module_info.pCode = spirv.data();
  DUET_VK_RETURN_IF_ERROR(
      vkCreateShaderModule(vk_device, &module_info, nullptr, &pipeline->module_));

  std::vector<VkDescriptorSetLayoutBinding> bindings(pipeline->num_bindings_);
  for (uint32_t b = 0; b < pipeline->num_bindings_; ++b) {
    bindings[b] = VkDescriptorSetLayoutBinding{b, pipeline->binding_types_[b], 1,
                                               VK_SHADER_STAGE_COMPUTE_BIT, nullptr};
  }
  VkDescriptorSetLayoutCreateInfo set_info{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
  if (device_->uses_push_descriptors()) {
    set_info.flags = VK_DESCRIPTOR_SET_LAYOUT_CREATE_PUSH_DESCRIPTOR_BIT_KHR;
  }
  set_info.bindingCount = pipeline->num_bindings_;
  set_info.pBindings = bindings.data();
  DUET_VK_RETURN_IF_ERROR(
      vkCreateDescriptorSetLayout(vk_device, &set_info, nullptr, &pipeline->set_layout_));

  VkPushConstantRange range{VK_SHADER_STAGE_COMPUTE_BIT, 0, iface.push_constant_bytes};
  VkPipelineLayoutCreateInfo layout_info{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
  layout_info.setLayoutCount = 1;
  layout_info.pSetLayouts = &pipeline->set_layout_;
  layout_info.pushConstantRangeCount = iface.push_constant_bytes > 0 ? 1 : 0;
  layout_info.pPushConstantRanges = &range;
  DUET_VK_RETURN_IF_ERROR(
      vkCreatePipelineLayout(vk_device, &layout_info, nullptr, &pipeline->layout_));

  VkSpecializationInfo spec_info{};
  spec_info.mapEntryCount = static_cast<uint32_t>(entries.size());
  spec_info.pMapEntries = entries.data();
  spec_info.dataSize = spec_data.size() * sizeof(uint32_t);
  spec_info.pData = spec_data.data();

  VkComputePipelineCreateInfo info{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
  info.stage = VkPipelineShaderStageCreateInfo{VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO};
  info.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
  info.stage.module = pipeline->module_;
  info.stage.pName = "main";
  info.stage.pSpecializationInfo = entries.empty() ? nullptr : &spec_info;
  info.layout = pipeline->layout_;
  const VkResult result =
      vkCreateComputePipelines(vk_device, VK_NULL_HANDLE, 1, &info, nullptr, &pipeline->pipeline_);
  if (result != VK_SUCCESS) {
    return VkStatus(result, absl::StrCat("vkCreateComputePipelines(", name, ")"));
  }
  return pipeline;
}

}  // namespace duet::vk
