// Model hyper-parameters read from GGUF metadata, for the architectures Duet runs.
//
// Keys follow llama.cpp's naming: "general.architecture" = ARCH, then ARCH.embedding_length,
// ARCH.block_count, ARCH.feed_forward_length, ARCH.attention.head_count,
// ARCH.attention.head_count_kv (default: head_count), ARCH.attention.key_length (default:
// embedding_length / head_count), ARCH.attention.layer_norm_rms_epsilon, ARCH.context_length,
// ARCH.rope.freq_base (default 10000), ARCH.rope.dimension_count (default head_dim),
// ARCH.rope.scaling.type / .factor / .original_context_length, ARCH.vocab_size (default: the
// length of tokenizer.ggml.tokens, else token_embd's second dimension).
#ifndef DUET_COMMON_MODEL_MODEL_CONFIG_H_
#define DUET_COMMON_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/gguf.h"

namespace duet {

enum class Architecture { kLlama, kQwen2 };

// Which elements RoPE rotates together: kNormal pairs (2i, 2i+1) (llama in GGUF, whose
// converters permute Q/K), kNeox pairs (i, i + rot_dim/2) (qwen2).
enum class RopeLayout { kNormal, kNeox };

enum class RopeScalingType { kNone, kLinear };

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string architecture_name;  // "llama" | "qwen2"
  std::string name;               // general.name, may be empty.

  int64_t vocab_size = 0;
  int64_t hidden_dim = 0;      // embedding_length
  int64_t num_layers = 0;
  int64_t num_heads = 0;       // query heads
  int64_t num_kv_heads = 0;    // key/value heads; num_heads % num_kv_heads == 0 (GQA/MQA)
  int64_t head_dim = 0;
  int64_t ffn_dim = 0;         // SwiGLU intermediate size
  int64_t context_length = 0;  // trained context (max positions)

  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int64_t rope_dim = 0;  // rotated dimensions per head (== head_dim unless the file says less)
  RopeLayout rope_layout = RopeLayout::kNormal;
  RopeScalingType rope_scaling = RopeScalingType::kNone;
  float rope_scaling_factor = 1.0f;          // positions are divided by this for kLinear
  int64_t rope_original_context = 0;         // 0 when unknown
  bool has_rope_freq_factors = false;        // rope_freqs.weight present (Llama 3 scaling)

  bool tied_embeddings = false;  // no output.weight: logits use token_embd.weight
  bool qkv_bias = false;         // attn_{q,k,v}.bias present (qwen2)

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
};

// Reads and validates the config (positive sizes, divisibility, known rope scaling).
// Errors: INVALID_ARGUMENT naming an unsupported architecture ("architecture 'gpt2' is not
// supported (supported: llama, qwen2)"), a missing or ill-typed key, or an inconsistent value.
absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_MODEL_CONFIG_H_
