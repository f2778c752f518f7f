// Loading a model for the generating subcommands (generate, logits): file, tokenizer, backend.
#ifndef DUET_TOOLS_DUET_MODEL_LOADER_H_
#define DUET_TOOLS_DUET_MODEL_LOADER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/cpu_forward.h"
#include "common/model/gguf.h"
#include "common/model/tokenizer.h"

namespace duet::cli {

struct LoadedModel {
  std::shared_ptr<const GgufFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<CpuModel> model;
};

// Opens `path` and builds the tokenizer and the forward for `backend` (only "cpu" until the
// Vulkan engine lands). Errors name the file, the backend or the unsupported part.
absl::StatusOr<LoadedModel> LoadModel(const std::string& path, const std::string& backend);

// Tokenizes a prompt (BOS/EOS as the vocabulary says) and checks that the prompt plus
// `num_generate` tokens fit the model's context. INVALID_ARGUMENT names the problem: an empty
// prompt with no BOS, or the token counts against the context length.
absl::StatusOr<std::vector<int32_t>> TokenizePrompt(const LoadedModel& loaded,
                                                    const std::string& prompt,
                                                    int64_t num_generate);

}  // namespace duet::cli

#endif  // DUET_TOOLS_DUET_MODEL_LOADER_H_
