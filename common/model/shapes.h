// Named model shapes (the hyper-parameters of real models, without their weights) and the
// llama.cpp tensor layout a shape implies.
//
// The shapes mirror public Hugging Face configs (config.json of each model), so synthetic
// models built from them have the memory footprint and bandwidth of the real thing:
//   tiny            test-only llama: 64 hidden, 2 layers, 4/2 heads, head_dim 16, ffn 128
//   smollm2-135m    HuggingFaceTB/SmolLM2-135M
//   tinyllama-1.1b  TinyLlama/TinyLlama-1.1B (v1.0)
//   llama-3.2-1b    meta-llama/Llama-3.2-1B (with Llama 3 rope scaling)
//   qwen2.5-0.5b    Qwen/Qwen2.5-0.5B (architecture qwen2: qkv bias, NeoX rope)
#ifndef DUET_COMMON_MODEL_SHAPES_H_
#define DUET_COMMON_MODEL_SHAPES_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model_config.h"

namespace duet {

// Size of the built-in byte-level vocabulary of synthetic models (<unk>, <s>, </s> and the
// 256 byte tokens); the tiny shape's vocab_size.
inline constexpr int64_t kBuiltinVocabSize = 260;

// Llama 3's frequency-dependent rope scaling ("rope_type": "llama3" in config.json). GGUF
// files carry it as per-frequency factors in rope_freqs.weight; see Llama3RopeFreqFactors.
struct Llama3RopeScaling {
  bool enabled = false;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int64_t original_context = 8192;
};

struct ModelShape {
  std::string name;          // Table key, e.g. "smollm2-135m".
  std::string display_name;  // Written as general.name, e.g. "SmolLM2 135M (synthetic)".
  Architecture architecture = Architecture::kLlama;

  int64_t vocab_size = 0;
  int64_t hidden_dim = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t ffn_dim = 0;
  int64_t context_length = 0;

  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tied_embeddings = false;  // No output.weight; logits use token_embd.weight.
  bool qkv_bias = false;         // blk.N.attn_{q,k,v}.bias present.
  Llama3RopeScaling llama3_rope;

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
};

// "llama" or "qwen2": the GGUF general.architecture value.
std::string_view ArchitectureName(Architecture architecture);

// Every named shape, in table order.
const std::vector<ModelShape>& AllShapes();
// Names in table order, joined with ", " (for error and usage text).
std::string ShapeNames();
// NOT_FOUND (listing the valid names) when `name` is not in the table.
absl::StatusOr<ModelShape> FindShape(std::string_view name);

// The config a GGUF written from `shape` decodes to (rope layout from the architecture).
ModelConfig ToModelConfig(const ModelShape& shape);

// What a tensor is, which decides how it is stored and initialized.
enum class TensorRole {
  kEmbedding,    // token_embd.weight
  kOutput,       // output.weight (absent when tied)
  kNorm,         // attn_norm / ffn_norm / output_norm: stays f32
  kBias,         // attn_{q,k,v}.bias: stays f32
  kRopeFreqs,    // rope_freqs.weight: stays f32
  kProjection,   // attn_q/k/v, ffn_gate/up: input side of a block
  kResidualOut,  // attn_output, ffn_down: writes into the residual stream
};

// True for roles that llama.cpp keeps in f32 whatever the weight type (1-D tensors).
bool RoleStaysF32(TensorRole role);

// One tensor as llama.cpp names and shapes it. A Linear(in -> out) weight has ggml shape
// {in, out} (shape[0] innermost), so every row is one output feature.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role = TensorRole::kProjection;
  int64_t layer = -1;  // Block index, -1 for global tensors.

  int64_t num_elements() const;
};

// The tensors a GGUF for `shape` holds, in file order: rope_freqs (Llama 3 scaling only),
// token_embd, then per block attn_norm, attn_q, [attn_q.bias], attn_k, [attn_k.bias],
// attn_v, [attn_v.bias], attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down, then output_norm
// and output (untied only).
std::vector<TensorSpec> TensorLayout(const ModelShape& shape);

// Learned parameters: every tensor of TensorLayout except rope_freqs.weight (a constant of
// the rope schedule). A tied output shares token_embd and is counted once.
int64_t ParameterCount(const ModelShape& shape);

// rope_freqs.weight for Llama 3 scaling: head_dim / 2 factors, computed as llama.cpp's
// convert_hf_to_gguf.py does (per frequency i: wavelength 2*pi / theta^(-2i/head_dim);
// factor 1 below original_context / high_freq_factor, `factor` above original_context /
// low_freq_factor, a smooth blend in between). REQUIRES: shape.llama3_rope.enabled.
std::vector<float> Llama3RopeFreqFactors(const ModelShape& shape);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_SHAPES_H_
