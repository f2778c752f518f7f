// Binds a GGUF file's tensors to the roles a llama/qwen2 forward pass needs, checking names,
// shapes and types once so that every consumer (CPU reference, Vulkan engine) can index raw
// tensor bytes without re-validating.
//
// Shapes are in ggml order (shape[0] innermost): the weight of a Linear(in -> out) is
// {in, out}, i.e. `out` rows of `in` contiguous elements; token_embd is {hidden, vocab}.
#ifndef DUET_COMMON_MODEL_MODEL_WEIGHTS_H_
#define DUET_COMMON_MODEL_MODEL_WEIGHTS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"

namespace duet {

// Tensors of one transformer block (blk.N.*). Pointers are owned by the GgufFile.
struct LayerWeights {
  const GgufTensorInfo* attn_norm = nullptr;    // {hidden}
  const GgufTensorInfo* attn_q = nullptr;       // {hidden, q_dim}
  const GgufTensorInfo* attn_k = nullptr;       // {hidden, kv_dim}
  const GgufTensorInfo* attn_v = nullptr;       // {hidden, kv_dim}
  const GgufTensorInfo* attn_output = nullptr;  // {q_dim, hidden}
  const GgufTensorInfo* attn_q_bias = nullptr;  // {q_dim}; nullptr unless config.qkv_bias
  const GgufTensorInfo* attn_k_bias = nullptr;  // {kv_dim}; nullptr unless config.qkv_bias
  const GgufTensorInfo* attn_v_bias = nullptr;  // {kv_dim}; nullptr unless config.qkv_bias
  const GgufTensorInfo* ffn_norm = nullptr;     // {hidden}
  const GgufTensorInfo* ffn_gate = nullptr;     // {hidden, ffn}
  const GgufTensorInfo* ffn_up = nullptr;       // {hidden, ffn}
  const GgufTensorInfo* ffn_down = nullptr;     // {ffn, hidden}
};

// Every tensor of a model. Valid as long as the GgufFile it was bound from.
struct ModelWeights {
  const GgufTensorInfo* token_embd = nullptr;   // {hidden, vocab}
  const GgufTensorInfo* output_norm = nullptr;  // {hidden}
  const GgufTensorInfo* output = nullptr;       // {hidden, vocab}; == token_embd when tied
  const GgufTensorInfo* rope_freqs = nullptr;   // {rope_dim / 2}; nullptr when absent
  std::vector<LayerWeights> layers;             // [num_layers]
};

// Finds and checks every tensor `config` implies:
//  - present ("missing tensor blk.3.ffn_up.weight"),
//  - exactly the expected shape ("tensor blk.0.attn_k.weight has shape {64, 64}, expected
//    {64, 32}"),
//  - a supported type: matrices and token_embd F32, F16, BF16, Q8_0 or Q4_0 (with the row
//    length a multiple of the block size); norms, biases and rope_freqs F32, F16 or BF16
//    ("tensor blk.3.ffn_up.weight has type q4_k, which is not supported (supported: f32, f16,
//    bf16, q8_0, q4_0)").
// All errors are INVALID_ARGUMENT. Tensors the config does not use are ignored.
absl::StatusOr<ModelWeights> BindWeights(const GgufFile& file, const ModelConfig& config);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_MODEL_WEIGHTS_H_
