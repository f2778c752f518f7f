// The model the router serves: its GGUF metadata, tokenizer and config. The router reads the
// file for tokenization and validation only; it never loads the weights into an engine (the
// file is memory-mapped, so the weight bytes are never touched).
#ifndef DUET_ROUTER_SERVED_MODEL_H_
#define DUET_ROUTER_SERVED_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"
#include "common/model/tokenizer.h"
#include "duet/v1/duet.pb.h"
#include "router/validate.h"

namespace duet::router {

struct ServedModel {
  std::string id;  // ModelInfo.id
  std::shared_ptr<const GgufFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
  ModelConfig config;
  int64_t num_parameters = 0;  // elements of every tensor but rope_freqs

  ModelView view() const { return ModelView{id, tokenizer.get(), &config}; }
  duet::v1::ModelInfo info() const;
};

// "dir/tiny.gguf" -> "tiny".
std::string DefaultModelId(const std::string& path);

// Opens the GGUF at `path` and reads its tokenizer and config. model_id "" = DefaultModelId.
// Errors name the path and what is wrong (unsupported architecture, bad tokenizer, a tokenizer
// larger than the model's embedding).
absl::StatusOr<std::unique_ptr<ServedModel>> LoadServedModel(const std::string& path,
                                                             std::string model_id);

}  // namespace duet::router

#endif  // DUET_ROUTER_SERVED_MODEL_H_
