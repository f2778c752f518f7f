#include "tools/duet/model_loader.h"

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "tools/duet/cli_util.h"

namespace duet::cli {

absl::StatusOr<LoadedModel> LoadModel(const std::string& path, const std::string& backend) {
  if (backend != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend '", backend, "' is not available (available: cpu)"));
  }
  LoadedModel loaded;
  DUET_ASSIGN_OR_RETURN(loaded.file, OpenModelFile(path));
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(*loaded.file);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path, ": ", tokenizer.status().message()));
  }
  loaded.tokenizer = std::move(*tokenizer);
  absl::StatusOr<std::unique_ptr<CpuModel>> model = CpuModel::Load(loaded.file);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat(path, ": ", model.status().message()));
  }
  loaded.model = std::move(*model);
  // A model may pad its embedding past the tokenizer's vocabulary, never the reverse.
  if (loaded.tokenizer->vocab_size() > loaded.model->config().vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": the tokenizer has ", loaded.tokenizer->vocab_size(),
        " tokens but the model embeds only ", loaded.model->config().vocab_size));
  }
  return loaded;
}

absl::StatusOr<std::vector<int32_t>> TokenizePrompt(const LoadedModel& loaded,
                                                    const std::string& prompt,
                                                    int64_t num_generate) {
  std::vector<int32_t> tokens = loaded.tokenizer->Encode(prompt, /*add_special=*/true);
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        "the prompt is empty and the model adds no BOS token; give a non-empty --prompt");
  }
  const int64_t context = loaded.model->config().context_length;
  const int64_t needed = static_cast<int64_t>(tokens.size()) + num_generate;
  if (needed > context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt (", tokens.size(), " tokens) plus ", num_generate,
        " generated tokens exceeds the model's context length of ", context, " tokens"));
  }
  return tokens;
}

}  // namespace duet::cli
