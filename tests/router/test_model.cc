#include "tests/router/test_model.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "common/model/shapes.h"
#include "common/model/synthetic_model.h"
#include "gtest/gtest.h"

namespace duet::router::testing {

const ServedModel& TinyModel() {
  static const ServedModel* model = [] {
    SyntheticModelOptions options;
    options.shape = *FindShape("tiny");
    options.weight_type = GgmlType::kF32;
    options.seed = 1;
    const std::string path =
        ::testing::TempDir() + "/router_tiny_" + std::to_string(::getpid()) + ".gguf";
    const absl::Status written = WriteSyntheticModel(options, path);
    if (!written.ok()) {
      std::fprintf(stderr, "cannot write %s: %s\n", path.c_str(), written.ToString().c_str());
      std::abort();
    }
    absl::StatusOr<std::unique_ptr<ServedModel>> loaded = LoadServedModel(path, "tiny");
    if (!loaded.ok()) {
      std::fprintf(stderr, "cannot load %s: %s\n", path.c_str(),
                   loaded.status().ToString().c_str());
      std::abort();
    }
    // The file stays mapped; unlinking it keeps the mapping valid and leaves nothing behind.
    std::filesystem::remove(path);
    return loaded->release();
  }();
  return *model;
}

}  // namespace duet::router::testing
