#include "node/node_model.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace duet::node {
namespace {

absl::Status Prefixed(const std::string& source, const absl::Status& status) {
  std::string message(status.message());
  if (message.find(source) == std::string::npos) message = absl::StrCat(source, ": ", message);
  return absl::Status(status.code(), message);
}

}  // namespace

absl::StatusOr<NodeModel> NodeModelFromFile(std::shared_ptr<const GgufFile> file,
                                            const std::string& source, std::string model_id,
                                            const std::string& backend,
                                            const EngineOptions& options) {
  NodeModel model;
  model.file = std::move(file);
  model.model_id = std::move(model_id);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(*model.file);
  if (!tokenizer.ok()) return Prefixed(source, tokenizer.status());
  model.tokenizer = std::move(*tokenizer);
  absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(backend, model.file, options);
  if (!engine.ok()) return Prefixed(source, engine.status());
  model.engine = std::move(*engine);
  // A model may pad its embedding past the tokenizer's vocabulary, never the reverse.
  if (model.tokenizer->vocab_size() > model.engine->config().vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the tokenizer has ", model.tokenizer->vocab_size(),
                     " tokens but the model embeds only ", model.engine->config().vocab_size));
  }
  return model;
}

absl::StatusOr<NodeModel> LoadNodeModel(const std::string& path, std::string model_id,
                                        const std::string& backend, const EngineOptions& options) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  if (!file.ok()) return Prefixed(path, file.status());
  return NodeModelFromFile(std::shared_ptr<const GgufFile>(std::move(*file)), path,
                           std::move(model_id), backend, options);
}

}  // namespace duet::node
