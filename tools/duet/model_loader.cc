#include "tools/duet/model_loader.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "tools/duet/cli_util.h"

namespace duet::cli {

void AddEngineFlags(ArgParser& parser, EngineFlags* flags) {
  parser.AddString("backend", &flags->backend, "vulkan (default) or cpu (the reference)");
  parser.AddString("kv-dtype", &flags->kv_dtype,
                   "KV cache type: f32, f16 or fp8 (default: fp8 on vulkan, f32 on cpu)");
  parser.AddString("vk-device", &flags->vk_device,
                   "Vulkan device: index or name substring (default: DUET_VK_DEVICE, else the "
                   "first GPU)");
  parser.AddInt("vk-cpu-threads", &flags->vk_cpu_threads,
                "CPU Vulkan drivers (lavapipe): worker threads, 0 = run each dispatch on the "
                "submitting thread (fastest for small models; default: the driver's)");
  parser.AddBool("profile", &flags->profile, "print per-kernel GPU timing to stderr at the end");
}

absl::StatusOr<EngineOptions> EngineOptionsFromFlags(const EngineFlags& flags) {
  if (flags.backend != "vulkan" && flags.backend != "cpu") {
    return absl::UnavailableError(
        absl::StrCat("backend '", flags.backend, "' is not available (available: vulkan, cpu)"));
  }
  EngineOptions options;
  options.kv_dtype = flags.backend == "cpu" ? kv::CacheDtype::kF32 : kv::CacheDtype::kFp8E4M3;
  if (!flags.kv_dtype.empty()) {
    DUET_ASSIGN_OR_RETURN(options.kv_dtype, kv::ParseCacheDtype(flags.kv_dtype));
  }
  options.vk_device = flags.vk_device;
  if (flags.vk_cpu_threads < -1 || flags.vk_cpu_threads > kMaxVkCpuThreads) {
    return absl::InvalidArgumentError(absl::StrCat("--vk-cpu-threads ", flags.vk_cpu_threads,
                                                   " must be in [0, ", kMaxVkCpuThreads, "]"));
  }
  options.vk_cpu_threads = static_cast<int>(flags.vk_cpu_threads);
  options.profile = flags.profile;
  return options;
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& path) {
  LoadedModel loaded;
  DUET_ASSIGN_OR_RETURN(loaded.file, OpenModelFile(path));
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(*loaded.file);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path, ": ", tokenizer.status().message()));
  }
  loaded.tokenizer = std::move(*tokenizer);
  absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(*loaded.file);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  loaded.config = std::move(*config);
  // A model may pad its embedding past the tokenizer's vocabulary, never the reverse.
  if (loaded.tokenizer->vocab_size() > loaded.config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the tokenizer has ", loaded.tokenizer->vocab_size(),
                     " tokens but the model embeds only ", loaded.config.vocab_size));
  }
  return loaded;
}

std::vector<int32_t> SingleSequenceBlocks(const kv::KvLayout& layout, int64_t num_positions) {
  const int64_t n = (num_positions + layout.block_size - 1) / layout.block_size;
  std::vector<int32_t> table(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) table[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  return table;
}

absl::Status StartEngine(LoadedModel* loaded, const std::string& path, const std::string& backend,
                         EngineOptions options, int64_t num_positions) {
  options.num_kv_blocks =
      std::max<int64_t>(1, (num_positions + options.block_size - 1) / options.block_size);
  options.max_sequences = 1;
  absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(backend, loaded->file, options);
  if (!engine.ok()) {
    return absl::Status(engine.status().code(),
                        absl::StrCat(path, ": ", engine.status().message()));
  }
  loaded->engine = std::move(*engine);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> TokenizePrompt(const LoadedModel& loaded,
                                                    const std::string& prompt,
                                                    int64_t num_generate) {
  std::vector<int32_t> tokens = loaded.tokenizer->Encode(prompt, /*add_special=*/true);
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        "the prompt is empty and the model adds no BOS token; give a non-empty --prompt");
  }
  const int64_t context = loaded.config.context_length;
  const int64_t needed = static_cast<int64_t>(tokens.size()) + num_generate;
  if (needed > context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt (", tokens.size(), " tokens) plus ", num_generate,
        " generated tokens exceeds the model's context length of ", context, " tokens"));
  }
  return tokens;
}

void PrintProfile(const Engine& engine) {
  const std::string report = engine.ProfileReport();
  if (report.empty()) {
    std::fprintf(stderr, "profile: no per-kernel timing for the %s backend\n",
                 engine.backend_name().c_str());
    return;
  }
  std::fprintf(stderr, "profile (%s):\n%s", engine.backend_name().c_str(), report.c_str());
}

std::string WeightTypeName(const GgufFile& file) {
  const GgufTensorInfo* t = file.FindTensor("blk.0.attn_q.weight");
  return t == nullptr ? "?" : std::string(GgmlTypeName(t->type));
}

}  // namespace duet::cli
