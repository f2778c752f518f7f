// The model a node serves: the GGUF file, its tokenizer, and the one engine of the process.
#ifndef DUET_NODE_NODE_MODEL_H_
#define DUET_NODE_NODE_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "common/model/gguf.h"
#include "common/model/tokenizer.h"

namespace duet::node {

struct NodeModel {
  std::shared_ptr<const GgufFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Engine> engine;  // driven by the node's single worker thread
  std::string model_id;            // ModelInfo.id, checked against requests' model_id
};

// Builds the tokenizer and the engine for `backend` ("vulkan" or "cpu") over a parsed file.
// Errors (prefixed with `source`, e.g. the path): the tokenizer metadata, a tokenizer larger
// than the model's vocab, the engine's (unsupported model, KV options, device, memory).
absl::StatusOr<NodeModel> NodeModelFromFile(std::shared_ptr<const GgufFile> file,
                                            const std::string& source, std::string model_id,
                                            const std::string& backend,
                                            const EngineOptions& options);

// Opens `path` (errors name it) and calls NodeModelFromFile.
absl::StatusOr<NodeModel> LoadNodeModel(const std::string& path, std::string model_id,
                                        const std::string& backend, const EngineOptions& options);

}  // namespace duet::node

#endif  // DUET_NODE_NODE_MODEL_H_
