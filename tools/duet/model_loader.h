// Loading a model for the generating subcommands (generate, logits, bench): file, tokenizer,
// config, and the engine (CPU reference or Vulkan) with its KV cache.
#ifndef DUET_TOOLS_DUET_MODEL_LOADER_H_
#define DUET_TOOLS_DUET_MODEL_LOADER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/base/args.h"
#include "common/engine/engine.h"
#include "common/kv/paged_kv.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"
#include "common/model/tokenizer.h"

namespace duet::cli {

// The engine flags every generating subcommand takes.
struct EngineFlags {
  std::string backend = "vulkan";  // --backend vulkan|cpu
  std::string kv_dtype;            // --kv-dtype f32|f16|fp8; "" = fp8 on vulkan, f32 on cpu
  std::string vk_device;           // --vk-device NAME|INDEX; "" = DUET_VK_DEVICE or automatic
  int64_t vk_cpu_threads = -1;     // --vk-cpu-threads N; -1 = the CPU driver's default
  bool profile = false;            // --profile: per-kernel timing table on stderr at the end
};

// Registers --backend, --kv-dtype, --vk-device, --vk-cpu-threads and --profile on `parser`.
void AddEngineFlags(ArgParser& parser, EngineFlags* flags);

// Checks the flags before any file is read: INVALID_ARGUMENT for an unknown --kv-dtype
// (a usage error), and the unknown-backend error (listing the available ones).
absl::StatusOr<EngineOptions> EngineOptionsFromFlags(const EngineFlags& flags);

struct LoadedModel {
  std::shared_ptr<const GgufFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
  ModelConfig config;
  std::unique_ptr<Engine> engine;  // set by StartEngine
};

// Opens `path`, reads its config and builds the tokenizer. Errors name the file and the
// unsupported part.
absl::StatusOr<LoadedModel> LoadModel(const std::string& path);

// Creates loaded->engine for `backend` with a KV pool of just enough blocks for one sequence of
// `num_positions` positions (block ids 0..n-1, see SingleSequenceBlocks) and one tail slot.
// Errors (prefixed with the path): the model's weights, the device, device memory.
absl::Status StartEngine(LoadedModel* loaded, const std::string& path, const std::string& backend,
                         EngineOptions options, int64_t num_positions);

// The block table of the single sequence a CLI command runs: 0 .. ceil(num_positions /
// block_size) - 1.
std::vector<int32_t> SingleSequenceBlocks(const kv::KvLayout& layout, int64_t num_positions);

// Tokenizes a prompt (BOS/EOS as the vocabulary says) and checks that the prompt plus
// `num_generate` tokens fit the model's context. INVALID_ARGUMENT names the problem: an empty
// prompt with no BOS, or the token counts against the context length.
absl::StatusOr<std::vector<int32_t>> TokenizePrompt(const LoadedModel& loaded,
                                                    const std::string& prompt,
                                                    int64_t num_generate);

// The type of the first layer's Q weight ("q8_0", ...), or "?" (reports and bench JSON).
std::string WeightTypeName(const GgufFile& file);

// Prints the engine's per-kernel profile to stderr (a note for backends without one).
void PrintProfile(const Engine& engine);

}  // namespace duet::cli

#endif  // DUET_TOOLS_DUET_MODEL_LOADER_H_
