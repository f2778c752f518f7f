#include "common/vk/vk_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace duet::vk {

std::string VkResultName(VkResult result) {
  switch (result) {
#define DUET_VK_RESULT_CASE(name) \
  case name:                      \
    return #name;
    DUET_VK_RESULT_CASE(VK_SUCCESS)
    DUET_VK_RESULT_CASE(VK_NOT_READY)
    DUET_VK_RESULT_CASE(VK_TIMEOUT)
    DUET_VK_RESULT_CASE(VK_EVENT_SET)
    DUET_VK_RESULT_CASE(VK_EVENT_RESET)
    DUET_VK_RESULT_CASE(VK_INCOMPLETE)
    DUET_VK_RESULT_CASE(VK_ERROR_OUT_OF_HOST_MEMORY)
    DUET_VK_RESULT_CASE(VK_ERROR_OUT_OF_DEVICE_MEMORY)
    DUET_VK_RESULT_CASE(VK_ERROR_INITIALIZATION_FAILED)
    DUET_VK_RESULT_CASE(VK_ERROR_DEVICE_LOST)
    DUET_VK_RESULT_CASE(VK_ERROR_MEMORY_MAP_FAILED)
    DUET_VK_RESULT_CASE(VK_ERROR_LAYER_NOT_PRESENT)
    DUET_VK_RESULT_CASE(VK_ERROR_EXTENSION_NOT_PRESENT)
    DUET_VK_RESULT_CASE(VK_ERROR_FEATURE_NOT_PRESENT)
    DUET_VK_RESULT_CASE(VK_ERROR_INCOMPATIBLE_DRIVER)
    DUET_VK_RESULT_CASE(VK_ERROR_TOO_MANY_OBJECTS)
    DUET_VK_RESULT_CASE(VK_ERROR_FORMAT_NOT_SUPPORTED)
    DUET_VK_RESULT_CASE(VK_ERROR_FRAGMENTED_POOL)
    DUET_VK_RESULT_CASE(VK_ERROR_UNKNOWN)
    DUET_VK_RESULT_CASE(VK_ERROR_OUT_OF_POOL_MEMORY)
    DUET_VK_RESULT_CASE(VK_ERROR_INVALID_EXTERNAL_HANDLE)
    DUET_VK_RESULT_CASE(VK_ERROR_FRAGMENTATION)
    DUET_VK_RESULT_CASE(VK_ERROR_INVALID_OPAQUE_CAPTURE_ADDRESS)
    DUET_VK_RESULT_CASE(VK_PIPELINE_COMPILE_REQUIRED)
#undef DUET_VK_RESULT_CASE
    default:
      break;
  }
  return absl::StrCat("VkResult(", static_cast<int>(result), ")");
}

absl::Status VkStatus(VkResult result, std::string_view what) {
  if (result == VK_SUCCESS) return absl::OkStatus();
  const std::string message = absl::StrCat(std::string(what), ": ", VkResultName(result));
  switch (result) {
    case VK_ERROR_OUT_OF_HOST_MEMORY:
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
    case VK_ERROR_OUT_OF_POOL_MEMORY:
    case VK_ERROR_FRAGMENTED_POOL:
    case VK_ERROR_FRAGMENTATION:
    case VK_ERROR_TOO_MANY_OBJECTS:
      return absl::ResourceExhaustedError(message);
    case VK_ERROR_DEVICE_LOST:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace duet::vk
