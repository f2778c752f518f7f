// CPU reference forward pass for llama / qwen2 models: the numerics oracle every Vulkan kernel
// is checked against. Plain C++ on purpose: f32 activations, dot products accumulated in double
// (DotRow), weights decoded row by row from the GGUF bytes, never converted whole to f32.
//
// Per layer (llama.cpp semantics):
//   h = RmsNorm(x) * attn_norm
//   q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv)          (biases for qwen2)
//   q, k = Rope(q, pos), Rope(k, pos)
//   x += Wo CausalAttention(q, K[0..pos], V[0..pos])      (grouped-query, scale 1/sqrt(head_dim))
//   h = RmsNorm(x) * ffn_norm
//   x += Wdown (silu(Wgate h) * Wup h)
// then logits = Woutput (RmsNorm(x) * output_norm).
#ifndef DUET_COMMON_MODEL_CPU_FORWARD_H_
#define DUET_COMMON_MODEL_CPU_FORWARD_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"
#include "common/model/model_weights.h"

namespace duet {

namespace cpu_ref {

// f32 copies of the small weights that the forward applies element-wise.
struct SmallWeights {
  struct Layer {
    std::vector<float> attn_norm;  // [hidden]
    std::vector<float> ffn_norm;   // [hidden]
    std::vector<float> q_bias;     // [q_dim], empty without biases
    std::vector<float> k_bias;     // [kv_dim], empty without biases
    std::vector<float> v_bias;     // [kv_dim], empty without biases
  };
  std::vector<Layer> layers;       // [num_layers]
  std::vector<float> output_norm;  // [hidden]
  std::vector<float> rope_freqs;   // [rope_dim / 2], empty when absent
};
SmallWeights DecodeSmallWeights(const ModelWeights& weights);

}  // namespace cpu_ref

// Contiguous f32 KV cache of one sequence: K and V each laid out as
// [num_layers][max_tokens][num_kv_heads][head_dim], holding post-RoPE keys.
// Positions [0, num_tokens()) are valid. Not thread-safe.
class CpuKvCache {
 public:
  // REQUIRES: max_tokens >= 0.
  CpuKvCache(const ModelConfig& config, int64_t max_tokens);

  int64_t num_tokens() const { return num_tokens_; }
  int64_t max_tokens() const { return max_tokens_; }
  int64_t num_layers() const { return num_layers_; }
  int64_t kv_dim() const { return kv_dim_; }  // num_kv_heads * head_dim

  // Forgets positions >= num_tokens (e.g. rejected speculative tokens).
  // REQUIRES: 0 <= num_tokens <= this->num_tokens().
  void Truncate(int64_t num_tokens);

  // K / V of one position: [num_kv_heads, head_dim].
  // REQUIRES: 0 <= layer < num_layers(), 0 <= position < max_tokens().
  const float* key(int64_t layer, int64_t position) const;
  const float* value(int64_t layer, int64_t position) const;

 private:
  friend class CpuModel;

  float* mutable_key(int64_t layer, int64_t position);
  float* mutable_value(int64_t layer, int64_t position);
  size_t Index(int64_t layer, int64_t position) const;

  int64_t num_layers_;
  int64_t kv_dim_;
  int64_t max_tokens_;
  int64_t num_tokens_ = 0;
  std::vector<float> keys_;    // [num_layers, max_tokens, kv_dim]
  std::vector<float> values_;  // [num_layers, max_tokens, kv_dim]
};

// A loaded model. Immutable after Load: Forward may run concurrently on distinct caches.
class CpuModel {
 public:
  // Reads the config, binds and checks every weight, and decodes the small vectors (norms,
  // biases, rope factors) to f32. Errors from ModelConfigFromGguf / BindWeights.
  static absl::StatusOr<std::unique_ptr<CpuModel>> Load(std::shared_ptr<const GgufFile> file);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }

  // Runs `tokens` at positions cache->num_tokens() .. + tokens.size() - 1, appending their K/V.
  // Returns logits [tokens.size(), vocab] when all_logits, else [vocab] for the last token.
  // INVALID_ARGUMENT for an empty span, a token id outside [0, vocab), a cache built for another
  // shape, or running past the cache's capacity or the model's context length; nothing is
  // appended on error.
  absl::StatusOr<std::vector<float>> Forward(absl::Span<const int32_t> tokens, CpuKvCache* cache,
                                             bool all_logits = false) const;

 private:
  CpuModel(std::shared_ptr<const GgufFile> file, ModelConfig config, ModelWeights weights);

  // x: [num_tokens, hidden], updated in place; writes K/V of positions first_position.. .
  void RunLayer(int64_t layer, int64_t first_position, int64_t num_tokens, float* x,
                CpuKvCache* cache) const;

  std::shared_ptr<const GgufFile> file_;
  ModelConfig config_;
  ModelWeights weights_;
  cpu_ref::SmallWeights small_;  // norms, biases, rope factors as f32
};

// Reference ops, one per kernel, for checking kernels in isolation.
namespace cpu_ref {

// Decodes a whole small tensor (norm weights, biases) to f32.
// REQUIRES: TraitsOf(tensor.type).supported.
std::vector<float> DequantizeTensor(const GgufTensorInfo& tensor);

// out = x / sqrt(mean(x^2) + eps) * weight, the mean accumulated in double.
// x, weight, out: [n]; out may alias x.
void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out);

// y = W x for a weight of shape {in, out} (out rows of `in` elements): x [in], y [out].
// Each output is DotRow over one encoded row.
void MatVec(const GgufTensorInfo& weight, const float* x, float* y);

// Rotates x [num_heads, head_dim] in place for `position`. Pair i (i < rope_dim / 2) turns by
//   theta_i = (position / scale) * rope_theta^(-2i / rope_dim) / freq_factors[i]
// where scale = rope_scaling_factor for kLinear (else 1) and freq_factors is empty or
// [rope_dim / 2]. kNormal rotates (2i, 2i+1); kNeox rotates (i, i + rope_dim/2). Dimensions
// >= rope_dim pass through. Angles are computed in double.
void ApplyRope(const ModelConfig& config, absl::Span<const float> freq_factors, int64_t position,
               int64_t num_heads, float* x);

// Grouped-query attention of one query token over `num_positions` cached positions:
//   out[h] = sum_j softmax_j(q[h] . k[j][g] / sqrt(head_dim)) v[j][g],  g = h / (heads / kv_heads)
// q, out: [num_heads, head_dim]; keys, values: [num_positions, num_kv_heads, head_dim].
// Scores, the softmax (max-subtracted) and the weighted sums are computed in double.
// REQUIRES: num_positions >= 1, num_heads % num_kv_heads == 0.
void Attention(const float* q, const float* keys, const float* values, int64_t num_positions,
               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, float* out);

// silu(x) = x / (1 + exp(-x)), in f32 as ggml computes it.
float Silu(float x);

}  // namespace cpu_ref
}  // namespace duet

#endif  // DUET_COMMON_MODEL_CPU_FORWARD_H_
