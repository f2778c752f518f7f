// VkResult -> absl::Status. Every Vulkan call that can fail goes through DUET_VK_RETURN_IF_ERROR
// so errors carry the call and the result's name, never a bare integer.
#ifndef DUET_COMMON_VK_VK_STATUS_H_
#define DUET_COMMON_VK_VK_STATUS_H_

#include <vulkan/vulkan.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace duet::vk {

// "VK_ERROR_OUT_OF_DEVICE_MEMORY", ... ("VkResult(-13)" for unknown values).
std::string VkResultName(VkResult result);

// OK for VK_SUCCESS; otherwise RESOURCE_EXHAUSTED for out-of-memory results, UNAVAILABLE for
// VK_ERROR_DEVICE_LOST, INTERNAL for the rest, with "<what>: <result name>" as the message.
absl::Status VkStatus(VkResult result, std::string_view what);

}  // namespace duet::vk

// Returns a Status from the enclosing function when the Vulkan call does not give VK_SUCCESS.
#define DUET_VK_RETURN_IF_ERROR(call)                      \
  do {                                                     \
    const VkResult duet_vk_result_ = (call);               \
    if (duet_vk_result_ != VK_SUCCESS) {                   \
      return ::duet::vk::VkStatus(duet_vk_result_, #call); \
    }                                                      \
  } while (0)

#endif  // DUET_COMMON_VK_VK_STATUS_H_
