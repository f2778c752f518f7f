#include "common/engine/engine.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/engine/cpu_engine.h"
#include "common/engine/vulkan_engine.h"

namespace duet {

absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(const std::string& backend,
                                                     std::shared_ptr<const GgufFile> file,
                                                     const EngineOptions& options) {
  if (backend == "cpu") {
    absl::StatusOr<std::unique_ptr<CpuEngine>> engine = CpuEngine::Create(std::move(file), options);
    if (!engine.ok()) return engine.status();
    return std::unique_ptr<Engine>(std::move(*engine));
  }
  if (backend == "vulkan") {
    absl::StatusOr<std::unique_ptr<VulkanEngine>> engine =
        VulkanEngine::Create(std::move(file), options);
    if (!engine.ok()) return engine.status();
    return std::unique_ptr<Engine>(std::move(*engine));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("backend '", backend, "' is not available (available: vulkan, cpu)"));
}

}  // namespace duet
