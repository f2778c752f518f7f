#include "common/model/model_config.h"

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/base/status.h"

namespace duet {
namespace {

// Upper bounds that keep every derived size (q_dim, kv_dim, tensor element counts) far from
// int64 overflow; real models are orders of magnitude below them. BindWeights later checks
// that tensors of these sizes actually exist in the file.
constexpr int64_t kMaxDim = int64_t{1} << 31;
constexpr int64_t kMaxHeads = int64_t{1} << 16;
constexpr int64_t kMaxLayers = int64_t{1} << 16;

// Reads metadata keys of one architecture ("llama.embedding_length", ...) with error messages
// that name the full key.
class KeyReader {
 public:
  KeyReader(const GgufFile& file, std::string_view arch) : file_(file), arch_(arch) {}

  // absl here predates std::string_view interop, so keys and names go through std::string.

  std::string Key(std::string_view suffix) const {
    return absl::StrCat(arch_, ".", std::string(suffix));
  }

  // INVALID_ARGUMENT when missing or ill-typed.
  absl::StatusOr<int64_t> RequiredInt(std::string_view suffix) const {
    const std::string key = Key(suffix);
    const GgufValue* value = file_.Find(key);
    if (value == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("missing metadata key ", key));
    }
    return WithKey(key, value->AsInt());
  }

  absl::StatusOr<std::optional<int64_t>> OptionalInt(std::string_view suffix) const {
    const std::string key = Key(suffix);
    const GgufValue* value = file_.Find(key);
    if (value == nullptr) return std::optional<int64_t>();
    DUET_ASSIGN_OR_RETURN(int64_t v, WithKey(key, value->AsInt()));
    return std::optional<int64_t>(v);
  }

  absl::StatusOr<double> RequiredDouble(std::string_view suffix) const {
    const std::string key = Key(suffix);
    const GgufValue* value = file_.Find(key);
    if (value == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("missing metadata key ", key));
    }
    return WithKey(key, value->AsDouble());
  }

  absl::StatusOr<std::optional<double>> OptionalDouble(std::string_view suffix) const {
    const std::string key = Key(suffix);
    const GgufValue* value = file_.Find(key);
    if (value == nullptr) return std::optional<double>();
    DUET_ASSIGN_OR_RETURN(double v, WithKey(key, value->AsDouble()));
    return std::optional<double>(v);
  }

  absl::StatusOr<std::optional<std::string>> OptionalString(std::string_view suffix) const {
    const std::string key = Key(suffix);
    const GgufValue* value = file_.Find(key);
    if (value == nullptr) return std::optional<std::string>();
    DUET_ASSIGN_OR_RETURN(std::string_view v, WithKey(key, value->AsString()));
    return std::optional<std::string>(std::string(v));
  }

 private:
  // Prefixes a typed-view error with the key it came from.
  template <typename T>
  static absl::StatusOr<T> WithKey(const std::string& key, absl::StatusOr<T> value) {
    if (!value.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata key ", key, ": ", value.status().message()));
    }
    return value;
  }

  const GgufFile& file_;
  std::string arch_;
};

absl::Status CheckRange(const std::string& what, int64_t value, int64_t min, int64_t max) {
  if (value < min || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is ", value, ", expected a value in [", min, ", ", max, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Architecture> ParseArchitecture(std::string_view name) {
  if (name == "llama") return Architecture::kLlama;
  if (name == "qwen2") return Architecture::kQwen2;
  return absl::InvalidArgumentError(absl::StrCat("architecture '", std::string(name),
                                                 "' is not supported (supported: llama, qwen2)"));
}

// vocab_size from ARCH.vocab_size, else the tokenizer's token list, else token_embd's shape.
absl::StatusOr<int64_t> ReadVocabSize(const GgufFile& file, const KeyReader& keys) {
  DUET_ASSIGN_OR_RETURN(std::optional<int64_t> explicit_size, keys.OptionalInt("vocab_size"));
  if (explicit_size.has_value()) return *explicit_size;
  if (const GgufValue* tokens = file.Find("tokenizer.ggml.tokens"); tokens != nullptr) {
    absl::StatusOr<const GgufArray*> array = tokens->AsArray();
    if (!array.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata key tokenizer.ggml.tokens: ", array.status().message()));
    }
    return static_cast<int64_t>((*array)->items.size());
  }
  const GgufTensorInfo* embd = file.FindTensor("token_embd.weight");
  if (embd != nullptr && embd->shape.size() == 2) return embd->shape[1];
  return absl::InvalidArgumentError(
      absl::StrCat("cannot determine the vocabulary size: no ", keys.Key("vocab_size"),
                   ", no tokenizer.ggml.tokens and no 2-D token_embd.weight"));
}

absl::Status ReadRopeScaling(const KeyReader& keys, ModelConfig* config) {
  DUET_ASSIGN_OR_RETURN(std::optional<std::string> type, keys.OptionalString("rope.scaling.type"));
  DUET_ASSIGN_OR_RETURN(std::optional<double> factor, keys.OptionalDouble("rope.scaling.factor"));
  if (!factor.has_value()) {
    // Older converters wrote the linear factor under its own key.
    DUET_ASSIGN_OR_RETURN(factor, keys.OptionalDouble("rope.scale_linear"));
  }
  DUET_ASSIGN_OR_RETURN(std::optional<int64_t> original,
                        keys.OptionalInt("rope.scaling.original_context_length"));
  config->rope_original_context = original.value_or(0);
  if (config->rope_original_context < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(keys.Key("rope.scaling.original_context_length"), " is negative"));
  }

  // As llama.cpp: an absent type means linear, and an absent (or zero) factor means 1; a file
  // with neither key is unscaled.
  const double scale = (factor.has_value() && *factor != 0.0) ? *factor : 1.0;
  const std::string type_name =
      type.has_value() ? absl::AsciiStrToLower(*type) : (scale == 1.0 ? "none" : "linear");
  if (type_name == "none") {
    config->rope_scaling = RopeScalingType::kNone;
    config->rope_scaling_factor = 1.0f;
    return absl::OkStatus();
  }
  if (type_name != "linear") {
    return absl::InvalidArgumentError(absl::StrCat("rope scaling type '", type_name,
                                                   "' is not supported (supported: none, linear)"));
  }
  if (!(scale > 0.0) || !std::isfinite(scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat(keys.Key("rope.scaling.factor"), " is ", scale, ", expected > 0"));
  }
  config->rope_scaling = RopeScalingType::kLinear;
  config->rope_scaling_factor = static_cast<float>(scale);
  return absl::OkStatus();
}

absl::Status Validate(const ModelConfig& c, const KeyReader& keys) {
  DUET_RETURN_IF_ERROR(CheckRange(keys.Key("vocab_size"), c.vocab_size, 1, kMaxDim));
  DUET_RETURN_IF_ERROR(CheckRange(keys.Key("embedding_length"), c.hidden_dim, 1, kMaxDim));
  DUET_RETURN_IF_ERROR(CheckRange(keys.Key("block_count"), c.num_layers, 1, kMaxLayers));
  DUET_RETURN_IF_ERROR(CheckRange(keys.Key("feed_forward_length"), c.ffn_dim, 1, kMaxDim));
  DUET_RETURN_IF_ERROR(CheckRange(keys.Key("context_length"), c.context_length, 1, kMaxDim));
  DUET_RETURN_IF_ERROR(CheckRange(keys.Key("attention.head_count"), c.num_heads, 1, kMaxHeads));
  DUET_RETURN_IF_ERROR(
      CheckRange(keys.Key("attention.head_count_kv"), c.num_kv_heads, 1, c.num_heads));
  DUET_RETURN_IF_ERROR(CheckRange(keys.Key("attention.key_length"), c.head_dim, 1, kMaxHeads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inconsistent attention heads: ", keys.Key("attention.head_count"), " = ", c.num_heads,
        " is not a multiple of ", keys.Key("attention.head_count_kv"), " = ", c.num_kv_heads));
  }
  DUET_RETURN_IF_ERROR(CheckRange(keys.Key("rope.dimension_count"), c.rope_dim, 2, c.head_dim));
  if (c.rope_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(keys.Key("rope.dimension_count"), " is ",
                                                   c.rope_dim, ", expected an even number"));
  }
  if (!(c.rms_norm_eps > 0.0f) || !std::isfinite(c.rms_norm_eps)) {
    return absl::InvalidArgumentError(absl::StrCat(keys.Key("attention.layer_norm_rms_epsilon"),
                                                   " is ", c.rms_norm_eps, ", expected > 0"));
  }
  if (!(c.rope_theta > 0.0f) || !std::isfinite(c.rope_theta)) {
    return absl::InvalidArgumentError(
        absl::StrCat(keys.Key("rope.freq_base"), " is ", c.rope_theta, ", expected > 0"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file) {
  ModelConfig config;
  const GgufValue* arch_value = file.Find("general.architecture");
  if (arch_value == nullptr) {
    return absl::InvalidArgumentError("missing metadata key general.architecture");
  }
  absl::StatusOr<std::string_view> arch_name = arch_value->AsString();
  if (!arch_name.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata key general.architecture: ", arch_name.status().message()));
  }
  config.architecture_name = std::string(*arch_name);
  DUET_ASSIGN_OR_RETURN(config.architecture, ParseArchitecture(config.architecture_name));
  if (const GgufValue* name = file.Find("general.name"); name != nullptr) {
    if (absl::StatusOr<std::string_view> s = name->AsString(); s.ok()) config.name = *s;
  }

  const KeyReader keys(file, config.architecture_name);
  DUET_ASSIGN_OR_RETURN(config.hidden_dim, keys.RequiredInt("embedding_length"));
  DUET_ASSIGN_OR_RETURN(config.num_layers, keys.RequiredInt("block_count"));
  DUET_ASSIGN_OR_RETURN(config.ffn_dim, keys.RequiredInt("feed_forward_length"));
  DUET_ASSIGN_OR_RETURN(config.context_length, keys.RequiredInt("context_length"));
  DUET_ASSIGN_OR_RETURN(config.num_heads, keys.RequiredInt("attention.head_count"));
  DUET_RETURN_IF_ERROR(
      CheckRange(keys.Key("attention.head_count"), config.num_heads, 1, kMaxHeads));
  DUET_ASSIGN_OR_RETURN(std::optional<int64_t> num_kv_heads,
                        keys.OptionalInt("attention.head_count_kv"));
  config.num_kv_heads = num_kv_heads.value_or(config.num_heads);

  DUET_ASSIGN_OR_RETURN(std::optional<int64_t> key_length,
                        keys.OptionalInt("attention.key_length"));
  if (key_length.has_value()) {
    config.head_dim = *key_length;
  } else {
    DUET_RETURN_IF_ERROR(CheckRange(keys.Key("embedding_length"), config.hidden_dim, 1, kMaxDim));
    if (config.hidden_dim % config.num_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inconsistent attention heads: ", keys.Key("embedding_length"), " = ", config.hidden_dim,
          " is not a multiple of ", keys.Key("attention.head_count"), " = ", config.num_heads,
          " and ", keys.Key("attention.key_length"), " is absent"));
    }
    config.head_dim = config.hidden_dim / config.num_heads;
  }
  DUET_ASSIGN_OR_RETURN(std::optional<int64_t> value_length,
                        keys.OptionalInt("attention.value_length"));
  if (value_length.has_value() && *value_length != config.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        keys.Key("attention.value_length"), " = ", *value_length, " differs from the key length ",
        config.head_dim, "; only equal key and value head sizes are supported"));
  }

  DUET_ASSIGN_OR_RETURN(double eps, keys.RequiredDouble("attention.layer_norm_rms_epsilon"));
  config.rms_norm_eps = static_cast<float>(eps);
  DUET_ASSIGN_OR_RETURN(std::optional<double> theta, keys.OptionalDouble("rope.freq_base"));
  config.rope_theta = static_cast<float>(theta.value_or(10000.0));
  DUET_ASSIGN_OR_RETURN(std::optional<int64_t> rope_dim, keys.OptionalInt("rope.dimension_count"));
  config.rope_dim = rope_dim.value_or(config.head_dim);
  DUET_RETURN_IF_ERROR(ReadRopeScaling(keys, &config));
  DUET_ASSIGN_OR_RETURN(config.vocab_size, ReadVocabSize(file, keys));

  switch (config.architecture) {
    case Architecture::kLlama:
      config.rope_layout = RopeLayout::kNormal;
      // llama.cpp treats Q/K/V biases as optional for llama; all-or-none is checked on binding.
      config.qkv_bias = file.FindTensor("blk.0.attn_q.bias") != nullptr;
      break;
    case Architecture::kQwen2:
      config.rope_layout = RopeLayout::kNeox;
      config.qkv_bias = true;
      break;
  }
  config.tied_embeddings = file.FindTensor("output.weight") == nullptr;
  config.has_rope_freq_factors = file.FindTensor("rope_freqs.weight") != nullptr;

  DUET_RETURN_IF_ERROR(Validate(config, keys));
  return config;
}

}  // namespace duet
