#include "common/model/model_weights.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status.h"

namespace duet {
namespace {

// What a tensor's role allows it to be stored as.
enum class Role {
  kMatrix,  // Linear weights and the embedding table: plain or block-quantized.
  kVector,  // Norm weights, biases, rope frequency factors: plain floats only.
};

constexpr GgmlType kMatrixTypes[] = {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                     GgmlType::kQ8_0, GgmlType::kQ4_0};
constexpr GgmlType kVectorTypes[] = {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16};

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("{", absl::StrJoin(shape, ", "), "}");
}

template <size_t N>
bool Contains(const GgmlType (&types)[N], GgmlType type) {
  for (GgmlType t : types) {
    if (t == type) return true;
  }
  return false;
}

template <size_t N>
std::string TypeList(const GgmlType (&types)[N]) {
  std::vector<std::string> names;
  for (GgmlType t : types) names.emplace_back(GgmlTypeName(t));
  return absl::StrJoin(names, ", ");
}

// Looks up `name` and checks its shape and type for `role`.
absl::StatusOr<const GgufTensorInfo*> BindTensor(const GgufFile& file, const std::string& name,
                                                 const std::vector<int64_t>& shape, Role role) {
  const GgufTensorInfo* tensor = file.FindTensor(name);
  if (tensor == nullptr) return absl::InvalidArgumentError(absl::StrCat("missing tensor ", name));
  if (tensor->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has shape ",
                                                   ShapeString(tensor->shape), ", expected ",
                                                   ShapeString(shape)));
  }
  const bool supported = role == Role::kMatrix ? Contains(kMatrixTypes, tensor->type)
                                               : Contains(kVectorTypes, tensor->type);
  if (!supported) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, " has type ", std::string(GgmlTypeName(tensor->type)),
                     ", which is not supported (supported: ",
                     role == Role::kMatrix ? TypeList(kMatrixTypes) : TypeList(kVectorTypes), ")"));
  }
  const int64_t block_size = TraitsOf(tensor->type).block_size;
  if (shape[0] % block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, " has type ", std::string(GgmlTypeName(tensor->type)), " and rows of ",
        shape[0], " elements, not a multiple of its ", block_size, "-element block"));
  }
  if (tensor->data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has no data"));
  }
  return tensor;
}

absl::StatusOr<LayerWeights> BindLayer(const GgufFile& file, const ModelConfig& c, int64_t layer) {
  const std::string prefix = absl::StrCat("blk.", layer, ".");
  const int64_t hidden = c.hidden_dim;
  LayerWeights w;
  DUET_ASSIGN_OR_RETURN(w.attn_norm,
                        BindTensor(file, prefix + "attn_norm.weight", {hidden}, Role::kVector));
  DUET_ASSIGN_OR_RETURN(
      w.attn_q, BindTensor(file, prefix + "attn_q.weight", {hidden, c.q_dim()}, Role::kMatrix));
  DUET_ASSIGN_OR_RETURN(
      w.attn_k, BindTensor(file, prefix + "attn_k.weight", {hidden, c.kv_dim()}, Role::kMatrix));
  DUET_ASSIGN_OR_RETURN(
      w.attn_v, BindTensor(file, prefix + "attn_v.weight", {hidden, c.kv_dim()}, Role::kMatrix));
  DUET_ASSIGN_OR_RETURN(w.attn_output, BindTensor(file, prefix + "attn_output.weight",
                                                  {c.q_dim(), hidden}, Role::kMatrix));
  if (c.qkv_bias) {
    DUET_ASSIGN_OR_RETURN(w.attn_q_bias,
                          BindTensor(file, prefix + "attn_q.bias", {c.q_dim()}, Role::kVector));
    DUET_ASSIGN_OR_RETURN(w.attn_k_bias,
                          BindTensor(file, prefix + "attn_k.bias", {c.kv_dim()}, Role::kVector));
    DUET_ASSIGN_OR_RETURN(w.attn_v_bias,
                          BindTensor(file, prefix + "attn_v.bias", {c.kv_dim()}, Role::kVector));
  }
  DUET_ASSIGN_OR_RETURN(w.ffn_norm,
                        BindTensor(file, prefix + "ffn_norm.weight", {hidden}, Role::kVector));
  DUET_ASSIGN_OR_RETURN(
      w.ffn_gate, BindTensor(file, prefix + "ffn_gate.weight", {hidden, c.ffn_dim}, Role::kMatrix));
  DUET_ASSIGN_OR_RETURN(
      w.ffn_up, BindTensor(file, prefix + "ffn_up.weight", {hidden, c.ffn_dim}, Role::kMatrix));
  DUET_ASSIGN_OR_RETURN(
      w.ffn_down, BindTensor(file, prefix + "ffn_down.weight", {c.ffn_dim, hidden}, Role::kMatrix));
  return w;
}

}  // namespace

absl::StatusOr<ModelWeights> BindWeights(const GgufFile& file, const ModelConfig& config) {
  ModelWeights weights;
  DUET_ASSIGN_OR_RETURN(
      weights.token_embd,
      BindTensor(file, "token_embd.weight", {config.hidden_dim, config.vocab_size}, Role::kMatrix));
  DUET_ASSIGN_OR_RETURN(weights.output_norm,
                        BindTensor(file, "output_norm.weight", {config.hidden_dim}, Role::kVector));
  if (config.tied_embeddings) {
    weights.output = weights.token_embd;
  } else {
    DUET_ASSIGN_OR_RETURN(
        weights.output,
        BindTensor(file, "output.weight", {config.hidden_dim, config.vocab_size}, Role::kMatrix));
  }
  if (config.has_rope_freq_factors) {
    DUET_ASSIGN_OR_RETURN(weights.rope_freqs, BindTensor(file, "rope_freqs.weight",
                                                         {config.rope_dim / 2}, Role::kVector));
  }
  weights.layers.reserve(static_cast<size_t>(config.num_layers));
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    DUET_ASSIGN_OR_RETURN(LayerWeights layer_weights, BindLayer(file, config, layer));
    weights.layers.push_back(layer_weights);
  }
  return weights;
}

}  // namespace duet
