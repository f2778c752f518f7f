#include "router/served_model.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace duet::router {
namespace {

absl::Status Prefixed(const std::string& path, const absl::Status& status) {
  if (absl::StrContains(status.message(), path)) return status;
  return absl::Status(status.code(), absl::StrCat(path, ": ", status.message()));
}

}  // namespace

duet::v1::ModelInfo ServedModel::info() const {
  duet::v1::ModelInfo info;
  info.set_id(id);
  info.set_architecture(config.architecture_name);
  info.set_context_length(config.context_length);
  info.set_vocab_size(static_cast<int32_t>(config.vocab_size));
  info.set_num_parameters(num_parameters);
  return info;
}

std::string DefaultModelId(const std::string& path) {
  std::string name = path;
  const size_t slash = name.find_last_of('/');
  if (slash != std::string::npos) name = name.substr(slash + 1);
  if (absl::EndsWith(name, ".gguf")) name.resize(name.size() - 5);
  return name;
}

absl::StatusOr<std::unique_ptr<ServedModel>> LoadServedModel(const std::string& path,
                                                             std::string model_id) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  if (!file.ok()) return Prefixed(path, file.status());
  auto model = std::make_unique<ServedModel>();
  model->file = std::move(*file);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(*model->file);
  if (!tokenizer.ok()) return Prefixed(path, tokenizer.status());
  model->tokenizer = std::move(*tokenizer);
  absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(*model->file);
  if (!config.ok()) return Prefixed(path, config.status());
  model->config = std::move(*config);
  if (model->tokenizer->vocab_size() > model->config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the tokenizer has ", model->tokenizer->vocab_size(),
                     " tokens but the model embeds only ", model->config.vocab_size));
  }
  for (const GgufTensorInfo& tensor : model->file->tensors()) {
    if (tensor.name != "rope_freqs.weight") model->num_parameters += tensor.num_elements();
  }
  model->id = model_id.empty() ? DefaultModelId(path) : std::move(model_id);
  return model;
}

}  // namespace duet::router
