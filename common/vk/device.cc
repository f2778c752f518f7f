#include "common/vk/device.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/vk/memory.h"
#include "common/vk/vk_status.h"

namespace duet::vk {
namespace {

constexpr uint32_t kRequiredApiVersion = VK_API_VERSION_1_2;
constexpr uint64_t kStagingChunkBytes = uint64_t{64} << 20;

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

DeviceType ToDeviceType(VkPhysicalDeviceType type) {
  switch (type) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
      return DeviceType::kDiscrete;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
      return DeviceType::kIntegrated;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:
      return DeviceType::kVirtual;
    case VK_PHYSICAL_DEVICE_TYPE_CPU:
      return DeviceType::kCpu;
    default:
      return DeviceType::kOther;
  }
}

// Lower is preferred.
int TypeRank(DeviceType type) {
  switch (type) {
    case DeviceType::kDiscrete:
      return 0;
    case DeviceType::kIntegrated:
      return 1;
    case DeviceType::kVirtual:
      return 2;
    case DeviceType::kCpu:
      return 3;
    case DeviceType::kOther:
      break;
  }
  return 4;
}

std::string ListDevices(absl::Span<const DeviceInfo> devices) {
  std::string out;
  for (const DeviceInfo& d : devices) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", d.index, ": ", d.name, " (",
                    std::string(DeviceTypeName(d.type)), ")");
  }
  return out;
}

bool HasExtension(const std::vector<VkExtensionProperties>& extensions, const char* name) {
  return std::any_of(extensions.begin(), extensions.end(), [&](const VkExtensionProperties& e) {
    return std::strcmp(e.extensionName, name) == 0;
  });
}

// An instance for Vulkan 1.2 (with portability enumeration where the loader offers it, so that
// MoltenVK-style drivers are listed too).
absl::StatusOr<VkInstance> CreateInstance(bool validation) {
  uint32_t num_extensions = 0;
  vkEnumerateInstanceExtensionProperties(nullptr, &num_extensions, nullptr);
  std::vector<VkExtensionProperties> extensions(num_extensions);
  vkEnumerateInstanceExtensionProperties(nullptr, &num_extensions, extensions.data());
  std::vector<const char*> enabled;
  VkInstanceCreateFlags flags = 0;
  if (HasExtension(extensions, VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME)) {
    enabled.push_back(VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME);
    flags |= VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR;
  }
  std::vector<const char*> layers;
  if (validation) {
    uint32_t num_layers = 0;
    vkEnumerateInstanceLayerProperties(&num_layers, nullptr);
    std::vector<VkLayerProperties> available(num_layers);
    vkEnumerateInstanceLayerProperties(&num_layers, available.data());
    for (const VkLayerProperties& layer : available) {
      if (std::strcmp(layer.layerName, "VK_LAYER_KHRONOS_validation") == 0) {
        layers.push_back("VK_LAYER_KHRONOS_validation");
      }
    }
  }
  VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
  app.pApplicationName = "duet";
  app.pEngineName = "duet";
  app.apiVersion = kRequiredApiVersion;
  VkInstanceCreateInfo info{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
  info.flags = flags;
  info.pApplicationInfo = &app;
  info.enabledExtensionCount = static_cast<uint32_t>(enabled.size());
  info.ppEnabledExtensionNames = enabled.data();
  info.enabledLayerCount = static_cast<uint32_t>(layers.size());
  info.ppEnabledLayerNames = layers.data();
  VkInstance instance = VK_NULL_HANDLE;
  const VkResult result = vkCreateInstance(&info, nullptr, &instance);
  if (result == VK_ERROR_INCOMPATIBLE_DRIVER) {
    return absl::NotFoundError("no Vulkan device: no Vulkan 1.2 driver is installed");
  }
  DUET_RETURN_IF_ERROR(VkStatus(result, "vkCreateInstance"));
  return instance;
}

std::vector<VkPhysicalDevice> PhysicalDevices(VkInstance instance) {
  uint32_t count = 0;
  vkEnumeratePhysicalDevices(instance, &count, nullptr);
  std::vector<VkPhysicalDevice> devices(count);
  vkEnumeratePhysicalDevices(instance, &count, devices.data());
  devices.resize(count);
  return devices;
}

DeviceInfo Describe(VkPhysicalDevice device, int index) {
  VkPhysicalDeviceProperties properties;
  vkGetPhysicalDeviceProperties(device, &properties);
  DeviceInfo info;
  info.index = index;
  info.name = properties.deviceName;
  info.type = ToDeviceType(properties.deviceType);
  info.vendor_id = properties.vendorID;
  info.device_id = properties.deviceID;
  info.api_version = properties.apiVersion;
  return info;
}

}  // namespace

std::string_view DeviceTypeName(DeviceType type) {
  switch (type) {
    case DeviceType::kDiscrete:
      return "discrete";
    case DeviceType::kIntegrated:
      return "integrated";
    case DeviceType::kVirtual:
      return "virtual";
    case DeviceType::kCpu:
      return "cpu";
    case DeviceType::kOther:
      break;
  }
  return "other";
}

absl::StatusOr<int> SelectDevice(absl::Span<const DeviceInfo> devices, std::string_view choice) {
  if (devices.empty()) return absl::NotFoundError("no Vulkan device found");
  if (choice.empty()) {
    const DeviceInfo* best = &devices[0];
    for (const DeviceInfo& d : devices) {
      if (TypeRank(d.type) < TypeRank(best->type)) best = &d;
    }
    return best->index;
  }
  int index = -1;
  const auto [end, error] = std::from_chars(choice.data(), choice.data() + choice.size(), index);
  if (error == std::errc() && end == choice.data() + choice.size()) {
    for (const DeviceInfo& d : devices) {
      if (d.index == index) return index;
    }
    return absl::NotFoundError(absl::StrCat("Vulkan device index ", index,
                                            " does not exist; devices: ", ListDevices(devices)));
  }
  const std::string wanted = Lower(choice);
  for (const DeviceInfo& d : devices) {
    if (Lower(d.name).find(wanted) != std::string::npos) return d.index;
  }
  return absl::NotFoundError(absl::StrCat("no Vulkan device name contains '", std::string(choice),
                                          "'; devices: ", ListDevices(devices)));
}

absl::Status CheckFeatures(const DeviceFeatures& have, const DeviceFeatures& required,
                           std::string_view device_name) {
  const std::pair<bool DeviceFeatures::*, const char*> kNames[] = {
      {&DeviceFeatures::shader_float16, "shaderFloat16"},
      {&DeviceFeatures::shader_int8, "shaderInt8"},
      {&DeviceFeatures::storage_buffer_8bit, "storageBuffer8BitAccess"},
      {&DeviceFeatures::storage_buffer_16bit, "storageBuffer16BitAccess"},
      {&DeviceFeatures::subgroup_arithmetic, "subgroup arithmetic in compute shaders"},
      {&DeviceFeatures::push_descriptors, "VK_KHR_push_descriptor"},
      {&DeviceFeatures::timestamps, "timestamp queries on the compute queue"},
  };
  for (const auto& [member, name] : kNames) {
    if (required.*member && !(have.*member)) {
      return absl::FailedPreconditionError(absl::StrCat("Vulkan device '", std::string(device_name),
                                                        "' lacks required feature ", name));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<DeviceInfo>> Device::Enumerate() {
  DUET_ASSIGN_OR_RETURN(VkInstance instance, CreateInstance(/*validation=*/false));
  std::vector<DeviceInfo> infos;
  const std::vector<VkPhysicalDevice> devices = PhysicalDevices(instance);
  for (size_t i = 0; i < devices.size(); ++i) {
    infos.push_back(Describe(devices[i], static_cast<int>(i)));
  }
  vkDestroyInstance(instance, nullptr);
  if (infos.empty()) return absl::NotFoundError("no Vulkan device found");
  return infos;
}

absl::StatusOr<std::unique_ptr<Device>> Device::Create(const DeviceOptions& options) {
  std::unique_ptr<Device> device(new Device());
  DUET_RETURN_IF_ERROR(device->Init(options));
  return device;
}

absl::Status Device::Init(const DeviceOptions& options) {
  if (options.cpu_threads < -1 || options.cpu_threads > kMaxCpuThreads) {
    return absl::InvalidArgumentError(absl::StrCat("CPU driver threads ", options.cpu_threads,
                                                   " outside [0, ", kMaxCpuThreads,
                                                   "] (-1: the driver's default)"));
  }
  if (options.cpu_threads >= 0) {
    // lavapipe reads it when an instance creates its physical devices.
    setenv("LP_NUM_THREADS", absl::StrCat(options.cpu_threads).c_str(), 1);
  }
  DUET_ASSIGN_OR_RETURN(instance_, CreateInstance(options.validation));
  const std::vector<VkPhysicalDevice> physical = PhysicalDevices(instance_);
  std::vector<DeviceInfo> infos;
  for (size_t i = 0; i < physical.size(); ++i) {
    infos.push_back(Describe(physical[i], static_cast<int>(i)));
  }
  std::string choice = options.device;
  if (choice.empty()) {
    const char* env = std::getenv("DUET_VK_DEVICE");
    if (env != nullptr) choice = env;
  }
  DUET_ASSIGN_OR_RETURN(const int index, SelectDevice(infos, choice));
  physical_device_ = physical[static_cast<size_t>(index)];
  info_ = infos[static_cast<size_t>(index)];
  if (info_.api_version < kRequiredApiVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("Vulkan device '", info_.name, "' supports Vulkan ",
                     VK_API_VERSION_MAJOR(info_.api_version), ".",
                     VK_API_VERSION_MINOR(info_.api_version), "; Duet needs 1.2"));
  }

  // Properties and limits.
  VkPhysicalDeviceSubgroupProperties subgroup{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  VkPhysicalDeviceProperties2 properties2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  properties2.pNext = &subgroup;
  vkGetPhysicalDeviceProperties2(physical_device_, &properties2);
  const VkPhysicalDeviceLimits& l = properties2.properties.limits;
  VkPhysicalDeviceMemoryProperties memory_properties;
  vkGetPhysicalDeviceMemoryProperties(physical_device_, &memory_properties);
  VkPhysicalDeviceMaintenance3Properties maintenance3{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
  VkPhysicalDeviceProperties2 properties_m3{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  properties_m3.pNext = &maintenance3;
  vkGetPhysicalDeviceProperties2(physical_device_, &properties_m3);

  limits_.max_storage_buffer_range = l.maxStorageBufferRange;
  if (options.max_storage_buffer_range_override > 0) {
    limits_.max_storage_buffer_range =
        std::min(limits_.max_storage_buffer_range, options.max_storage_buffer_range_override);
  }
  limits_.min_storage_buffer_offset_alignment =
      std::max<uint64_t>(4, l.minStorageBufferOffsetAlignment);
  limits_.min_texel_buffer_offset_alignment =
      std::max<uint64_t>(4, l.minTexelBufferOffsetAlignment);
  limits_.max_texel_buffer_elements = l.maxTexelBufferElements;
  limits_.max_memory_allocation_bytes = maintenance3.maxMemoryAllocationSize;
  limits_.max_shared_memory_bytes = l.maxComputeSharedMemorySize;
  limits_.max_push_constant_bytes = l.maxPushConstantsSize;
  limits_.subgroup_size = subgroup.subgroupSize;
  limits_.max_workgroup_invocations = l.maxComputeWorkGroupInvocations;
  for (int i = 0; i < 3; ++i) {
    limits_.max_workgroup_size[static_cast<size_t>(i)] = l.maxComputeWorkGroupSize[i];
    limits_.max_workgroup_count[static_cast<size_t>(i)] = l.maxComputeWorkGroupCount[i];
  }
  limits_.timestamp_period_ns = l.timestampPeriod;
  limits_.unified_memory = IsUnifiedMemory(memory_properties);

  // Queue: a compute family, preferring one with timestamps.
  uint32_t num_families = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(physical_device_, &num_families, nullptr);
  std::vector<VkQueueFamilyProperties> families(num_families);
  vkGetPhysicalDeviceQueueFamilyProperties(physical_device_, &num_families, families.data());
  int family = -1;
  for (uint32_t f = 0; f < num_families; ++f) {
    if (!(families[f].queueFlags & VK_QUEUE_COMPUTE_BIT)) continue;
    if (family < 0 || (families[f].timestampValidBits > 0 &&
                       families[static_cast<size_t>(family)].timestampValidBits == 0)) {
      family = static_cast<int>(f);
    }
  }
  if (family < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("Vulkan device '", info_.name, "' has no compute queue"));
  }
  queue_family_ = static_cast<uint32_t>(family);

  // Features.
  uint32_t num_extensions = 0;
  vkEnumerateDeviceExtensionProperties(physical_device_, nullptr, &num_extensions, nullptr);
  std::vector<VkExtensionProperties> extensions(num_extensions);
  vkEnumerateDeviceExtensionProperties(physical_device_, nullptr, &num_extensions,
                                       extensions.data());
  VkPhysicalDeviceVulkan12Features have12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  VkPhysicalDeviceVulkan11Features have11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
  have11.pNext = &have12;
  VkPhysicalDeviceFeatures2 have{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
  have.pNext = &have11;
  vkGetPhysicalDeviceFeatures2(physical_device_, &have);
  features_.shader_float16 = have12.shaderFloat16;
  features_.shader_int8 = have12.shaderInt8;
  features_.storage_buffer_8bit = have12.storageBuffer8BitAccess;
  features_.storage_buffer_16bit = have11.storageBuffer16BitAccess;
  features_.subgroup_arithmetic =
      (subgroup.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
      (subgroup.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
  features_.push_descriptors = HasExtension(extensions, VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME);
  features_.timestamps = families[queue_family_].timestampValidBits > 0 && l.timestampPeriod > 0;
  DUET_RETURN_IF_ERROR(CheckFeatures(features_, options.required, info_.name));

  // The device, with every optional feature that exists enabled.
  VkPhysicalDeviceVulkan12Features enable12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  enable12.shaderFloat16 = have12.shaderFloat16;
  enable12.shaderInt8 = have12.shaderInt8;
  enable12.storageBuffer8BitAccess = have12.storageBuffer8BitAccess;
  enable12.uniformAndStorageBuffer8BitAccess = have12.uniformAndStorageBuffer8BitAccess;
  VkPhysicalDeviceVulkan11Features enable11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
  enable11.pNext = &enable12;
  enable11.storageBuffer16BitAccess = have11.storageBuffer16BitAccess;
  enable11.uniformAndStorageBuffer16BitAccess = have11.uniformAndStorageBuffer16BitAccess;
  VkPhysicalDeviceFeatures2 enable{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
  enable.pNext = &enable11;
  enable.features.shaderInt64 = have.features.shaderInt64;
  enable.features.shaderInt16 = have.features.shaderInt16;
  enable.features.shaderFloat64 = have.features.shaderFloat64;

  std::vector<const char*> device_extensions;
  use_push_descriptors_ = features_.push_descriptors && options.use_push_descriptors;
  if (use_push_descriptors_) device_extensions.push_back(VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME);

  const float priority = 1.0f;
  VkDeviceQueueCreateInfo queue_info{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
  queue_info.queueFamilyIndex = queue_family_;
  queue_info.queueCount = 1;
  queue_info.pQueuePriorities = &priority;
  VkDeviceCreateInfo device_info{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
  device_info.pNext = &enable;
  device_info.queueCreateInfoCount = 1;
  device_info.pQueueCreateInfos = &queue_info;
  device_info.enabledExtensionCount = static_cast<uint32_t>(device_extensions.size());
  device_info.ppEnabledExtensionNames = device_extensions.data();
  DUET_VK_RETURN_IF_ERROR(vkCreateDevice(physical_device_, &device_info, nullptr, &device_));
  vkGetDeviceQueue(device_, queue_family_, 0, &queue_);
  if (use_push_descriptors_) {
    push_descriptor_fn_ = reinterpret_cast<PFN_vkCmdPushDescriptorSetKHR>(
        vkGetDeviceProcAddr(device_, "vkCmdPushDescriptorSetKHR"));
    if (push_descriptor_fn_ == nullptr) use_push_descriptors_ = false;
  }

  allocator_ = std::make_unique<MemoryAllocator>(device_, physical_device_, options.block_bytes,
                                                 limits_.min_storage_buffer_offset_alignment,
                                                 limits_.unified_memory);

  absl::MutexLock lock(&transfer_mutex_);
  VkCommandPoolCreateInfo pool_info{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  pool_info.flags = VK_COMMAND_POOL_CREATE_TRANSIENT_BIT;
  pool_info.queueFamilyIndex = queue_family_;
  DUET_VK_RETURN_IF_ERROR(vkCreateCommandPool(device_, &pool_info, nullptr, &transfer_pool_));
  VkFenceCreateInfo fence_info{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  DUET_VK_RETURN_IF_ERROR(vkCreateFence(device_, &fence_info, nullptr, &transfer_fence_));
  return absl::OkStatus();
}

Device::~Device() {
  if (device_ != VK_NULL_HANDLE) {
    vkDeviceWaitIdle(device_);
    {
      absl::MutexLock lock(&transfer_mutex_);
      if (transfer_fence_ != VK_NULL_HANDLE) vkDestroyFence(device_, transfer_fence_, nullptr);
      if (transfer_pool_ != VK_NULL_HANDLE) {
        vkDestroyCommandPool(device_, transfer_pool_, nullptr);
      }
    }
    allocator_.reset();
    vkDestroyDevice(device_, nullptr);
  }
  if (instance_ != VK_NULL_HANDLE) vkDestroyInstance(instance_, nullptr);
}

absl::StatusOr<Buffer> Device::CreateBuffer(uint64_t bytes, MemoryKind kind) {
  return allocator_->Create(bytes, kind);
}

MemoryStats Device::memory_stats() const { return allocator_->stats(); }

absl::Status Device::QueueSubmit(const VkSubmitInfo& submit, VkFence fence) {
  absl::MutexLock lock(&queue_mutex_);
  DUET_VK_RETURN_IF_ERROR(vkQueueSubmit(queue_, 1, &submit, fence));
  return absl::OkStatus();
}

absl::Status Device::RunCopy(VkBuffer src, VkBuffer dst, const VkBufferCopy& copy) {
  absl::MutexLock lock(&transfer_mutex_);
  VkCommandBufferAllocateInfo alloc{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
  alloc.commandPool = transfer_pool_;
  alloc.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  alloc.commandBufferCount = 1;
  VkCommandBuffer cb = VK_NULL_HANDLE;
  DUET_VK_RETURN_IF_ERROR(vkAllocateCommandBuffers(device_, &alloc, &cb));
  VkCommandBufferBeginInfo begin{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  absl::Status status = VkStatus(vkBeginCommandBuffer(cb, &begin), "vkBeginCommandBuffer");
  if (status.ok()) {
    vkCmdCopyBuffer(cb, src, dst, 1, &copy);
    // Make the copy visible to the host (downloads) and to later submissions (uploads).
    VkMemoryBarrier barrier{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    barrier.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
    barrier.dstAccessMask = VK_ACCESS_HOST_READ_BIT | VK_ACCESS_MEMORY_READ_BIT;
    vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_TRANSFER_BIT,
                         VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, 0, 1,
                         &barrier, 0, nullptr, 0, nullptr);
    status = VkStatus(vkEndCommandBuffer(cb), "vkEndCommandBuffer");
  }
  if (status.ok()) {
    VkSubmitInfo submit{VK_STRUCTURE_TYPE_SUBMIT_INFO};
    submit.commandBufferCount = 1;
    submit.pCommandBuffers = &cb;
    status = QueueSubmit(submit, transfer_fence_);
    if (status.ok()) {
      status = VkStatus(vkWaitForFences(device_, 1, &transfer_fence_, VK_TRUE, UINT64_MAX),
                        "vkWaitForFences");
      vkResetFences(device_, 1, &transfer_fence_);
    }
  }
  vkFreeCommandBuffers(device_, transfer_pool_, 1, &cb);
  return status;
}

absl::StatusOr<VkBufferView> Device::TexelView(BufferView view, VkFormat format) {
  if (view.offset % limits_.min_texel_buffer_offset_alignment != 0 || view.size % 16 != 0 ||
      view.size / 16 > limits_.max_texel_buffer_elements) {
    return absl::InvalidArgumentError(
        absl::StrCat("texel buffer view [", view.offset, ", +", view.size,
                     ") breaks the device's limits: offset", " a multiple of ",
                     limits_.min_texel_buffer_offset_alignment, ", size a multiple of 16, at",
                     " most ", limits_.max_texel_buffer_elements, " texels"));
  }
  return allocator_->TexelView(view, format);
}

absl::Status Device::Upload(BufferView dst, const void* src) {
  if (dst.size == 0) return absl::OkStatus();
  if (void* mapped = allocator_->MappedPointer(dst.buffer); mapped != nullptr) {
    std::memcpy(static_cast<char*>(mapped) + dst.offset, src, dst.size);
    return absl::OkStatus();
  }
  DUET_ASSIGN_OR_RETURN(Buffer staging,
                        CreateBuffer(std::min(dst.size, kStagingChunkBytes), MemoryKind::kUpload));
  for (uint64_t done = 0; done < dst.size; done += staging.size()) {
    const uint64_t n = std::min(staging.size(), dst.size - done);
    std::memcpy(staging.mapped(), static_cast<const char*>(src) + done, n);
    DUET_RETURN_IF_ERROR(
        RunCopy(staging.handle(), dst.buffer, VkBufferCopy{0, dst.offset + done, n}));
  }
  return absl::OkStatus();
}

absl::Status Device::Download(BufferView src, void* dst) {
  if (src.size == 0) return absl::OkStatus();
  if (void* mapped = allocator_->MappedPointer(src.buffer); mapped != nullptr) {
    std::memcpy(dst, static_cast<const char*>(mapped) + src.offset, src.size);
    return absl::OkStatus();
  }
  DUET_ASSIGN_OR_RETURN(
      Buffer staging, CreateBuffer(std::min(src.size, kStagingChunkBytes), MemoryKind::kReadback));
  for (uint64_t done = 0; done < src.size; done += staging.size()) {
    const uint64_t n = std::min(staging.size(), src.size - done);
    DUET_RETURN_IF_ERROR(
        RunCopy(src.buffer, staging.handle(), VkBufferCopy{src.offset + done, 0, n}));
    std::memcpy(static_cast<char*>(dst) + done, staging.mapped(), n);
  }
  return absl::OkStatus();
}

}  // namespace duet::vk
