#include "common/model/cpu_forward.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/model/quant.h"

namespace duet {
namespace {

// Broken invariants (REQUIRES clauses) crash loudly rather than corrupt memory.
void CheckOrDie(bool condition, const char* message) {
  if (!condition) {
    std::fprintf(stderr, "cpu_forward: check failed: %s\n", message);
    std::abort();
  }
}

const uint8_t* RowPointer(const GgufTensorInfo& tensor, int64_t row) {
  const int64_t row_bytes = GgmlRowBytes(tensor.type, tensor.shape[0]);
  return tensor.data + row * row_bytes;
}

void AddInPlace(const std::vector<float>& bias, float* x) {
  for (size_t i = 0; i < bias.size(); ++i) x[i] += bias[i];
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reference ops.

namespace cpu_ref {

std::vector<float> DequantizeTensor(const GgufTensorInfo& tensor) {
  std::vector<float> out(static_cast<size_t>(tensor.num_elements()));
  DequantizeRow(tensor.type, tensor.data, out.data(), tensor.num_elements());
  return out;
}

void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  double sum_squares = 0.0;
  for (int64_t i = 0; i < n; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
  // As ggml: the mean in double, the scale and the products in f32.
  const float mean = static_cast<float>(sum_squares / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * scale) * weight[i];
}

void MatVec(const GgufTensorInfo& weight, const float* x, float* y) {
  const int64_t in = weight.shape[0];
  const int64_t out = weight.shape[1];
  for (int64_t r = 0; r < out; ++r) {
    y[r] = static_cast<float>(DotRow(weight.type, RowPointer(weight, r), x, in));
  }
}

void ApplyRope(const ModelConfig& config, absl::Span<const float> freq_factors, int64_t position,
               int64_t num_heads, float* x) {
  const int64_t half = config.rope_dim / 2;
  CheckOrDie(freq_factors.empty() || static_cast<int64_t>(freq_factors.size()) == half,
             "rope freq_factors must be empty or [rope_dim / 2]");
  const double scaled_position =
      config.rope_scaling == RopeScalingType::kLinear
          ? static_cast<double>(position) / static_cast<double>(config.rope_scaling_factor)
          : static_cast<double>(position);
  for (int64_t i = 0; i < half; ++i) {
    double theta = scaled_position *
                   std::pow(static_cast<double>(config.rope_theta),
                            -2.0 * static_cast<double>(i) / static_cast<double>(config.rope_dim));
    if (!freq_factors.empty()) theta /= static_cast<double>(freq_factors[static_cast<size_t>(i)]);
    const double cos_theta = std::cos(theta);
    const double sin_theta = std::sin(theta);
    // Indices of the rotated pair within a head.
    const int64_t a = config.rope_layout == RopeLayout::kNormal ? 2 * i : i;
    const int64_t b = config.rope_layout == RopeLayout::kNormal ? 2 * i + 1 : i + half;
    for (int64_t h = 0; h < num_heads; ++h) {
      float* head = x + h * config.head_dim;
      const double x0 = head[a];
      const double x1 = head[b];
      head[a] = static_cast<float>(x0 * cos_theta - x1 * sin_theta);
      head[b] = static_cast<float>(x0 * sin_theta + x1 * cos_theta);
    }
  }
}

void Attention(const float* q, const float* keys, const float* values, int64_t num_positions,
               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, float* out) {
  CheckOrDie(num_positions >= 1, "attention needs at least one position");
  CheckOrDie(num_kv_heads >= 1 && num_heads % num_kv_heads == 0,
             "num_heads must be a multiple of num_kv_heads");
  const int64_t group = num_heads / num_kv_heads;
  const int64_t kv_dim = num_kv_heads * head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> scores(static_cast<size_t>(num_positions));
  std::vector<double> sum(static_cast<size_t>(head_dim));
  for (int64_t h = 0; h < num_heads; ++h) {
    const float* qh = q + h * head_dim;
    const int64_t kv_head = h / group;
    double max_score = -INFINITY;
    for (int64_t j = 0; j < num_positions; ++j) {
      const float* k = keys + j * kv_dim + kv_head * head_dim;
      double dot = 0.0;
      for (int64_t d = 0; d < head_dim; ++d) dot += static_cast<double>(qh[d]) * k[d];
      scores[static_cast<size_t>(j)] = dot * scale;
      max_score = std::max(max_score, dot * scale);
    }
    double denominator = 0.0;
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t j = 0; j < num_positions; ++j) {
      const double p = std::exp(scores[static_cast<size_t>(j)] - max_score);
      denominator += p;
      const float* v = values + j * kv_dim + kv_head * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) sum[static_cast<size_t>(d)] += p * v[d];
    }
    for (int64_t d = 0; d < head_dim; ++d) {
      out[h * head_dim + d] = static_cast<float>(sum[static_cast<size_t>(d)] / denominator);
    }
  }
}

float Silu(float x) { return x / (1.0f + std::exp(-x)); }

}  // namespace cpu_ref

// ---------------------------------------------------------------------------------------------
// CpuKvCache.

CpuKvCache::CpuKvCache(const ModelConfig& config, int64_t max_tokens)
    : num_layers_(config.num_layers), kv_dim_(config.kv_dim()), max_tokens_(max_tokens) {
  CheckOrDie(max_tokens >= 0, "CpuKvCache max_tokens must be >= 0");
  const size_t size = static_cast<size_t>(num_layers_ * max_tokens_ * kv_dim_);
  keys_.assign(size, 0.0f);
  values_.assign(size, 0.0f);
}

void CpuKvCache::Truncate(int64_t num_tokens) {
  CheckOrDie(num_tokens >= 0 && num_tokens <= num_tokens_,
             "CpuKvCache::Truncate past the cached tokens");
  num_tokens_ = num_tokens;
}

size_t CpuKvCache::Index(int64_t layer, int64_t position) const {
  CheckOrDie(layer >= 0 && layer < num_layers_ && position >= 0 && position < max_tokens_,
             "CpuKvCache index out of range");
  return static_cast<size_t>((layer * max_tokens_ + position) * kv_dim_);
}

const float* CpuKvCache::key(int64_t layer, int64_t position) const {
  return keys_.data() + Index(layer, position);
}
const float* CpuKvCache::value(int64_t layer, int64_t position) const {
  return values_.data() + Index(layer, position);
}
float* CpuKvCache::mutable_key(int64_t layer, int64_t position) {
  return keys_.data() + Index(layer, position);
}
float* CpuKvCache::mutable_value(int64_t layer, int64_t position) {
  return values_.data() + Index(layer, position);
}

namespace cpu_ref {

SmallWeights DecodeSmallWeights(const ModelWeights& weights) {
  SmallWeights small;
  small.layers.reserve(weights.layers.size());
  for (const LayerWeights& w : weights.layers) {
    SmallWeights::Layer v;
    v.attn_norm = DequantizeTensor(*w.attn_norm);
    v.ffn_norm = DequantizeTensor(*w.ffn_norm);
    if (w.attn_q_bias != nullptr) v.q_bias = DequantizeTensor(*w.attn_q_bias);
    if (w.attn_k_bias != nullptr) v.k_bias = DequantizeTensor(*w.attn_k_bias);
    if (w.attn_v_bias != nullptr) v.v_bias = DequantizeTensor(*w.attn_v_bias);
    small.layers.push_back(std::move(v));
  }
  small.output_norm = DequantizeTensor(*weights.output_norm);
  if (weights.rope_freqs != nullptr) small.rope_freqs = DequantizeTensor(*weights.rope_freqs);
  return small;
}

}  // namespace cpu_ref

// ---------------------------------------------------------------------------------------------
// CpuModel.

CpuModel::CpuModel(std::shared_ptr<const GgufFile> file, ModelConfig config, ModelWeights weights)
    : file_(std::move(file)),
      config_(std::move(config)),
      weights_(std::move(weights)),
      small_(cpu_ref::DecodeSmallWeights(weights_)) {}

absl::StatusOr<std::unique_ptr<CpuModel>> CpuModel::Load(std::shared_ptr<const GgufFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("CpuModel::Load: null GGUF file");
  DUET_ASSIGN_OR_RETURN(ModelConfig config, ModelConfigFromGguf(*file));
  DUET_ASSIGN_OR_RETURN(ModelWeights weights, BindWeights(*file, config));
  return std::unique_ptr<CpuModel>(
      new CpuModel(std::move(file), std::move(config), std::move(weights)));
}

void CpuModel::RunLayer(int64_t layer, int64_t first_position, int64_t num_tokens, float* x,
                        CpuKvCache* cache) const {
  const ModelConfig& c = config_;
  const LayerWeights& w = weights_.layers[static_cast<size_t>(layer)];
  const cpu_ref::SmallWeights::Layer& v = small_.layers[static_cast<size_t>(layer)];
  const int64_t hidden = c.hidden_dim;

  std::vector<float> h(static_cast<size_t>(hidden));                  // [hidden]
  std::vector<float> q(static_cast<size_t>(num_tokens * c.q_dim()));  // [num_tokens, q_dim]
  std::vector<float> attn(static_cast<size_t>(c.q_dim()));            // [num_heads, head_dim]
  std::vector<float> delta(static_cast<size_t>(hidden));              // [hidden]
  std::vector<float> gate(static_cast<size_t>(c.ffn_dim));            // [ffn]
  std::vector<float> up(static_cast<size_t>(c.ffn_dim));              // [ffn]

  // Q for every token; K and V straight into the cache. Attention of token t reads only
  // positions <= first_position + t, so writing later positions first is harmless.
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t position = first_position + t;
    float* qt = q.data() + t * c.q_dim();
    float* k = cache->mutable_key(layer, position);
    float* val = cache->mutable_value(layer, position);
    cpu_ref::RmsNorm(x + t * hidden, v.attn_norm.data(), hidden, c.rms_norm_eps, h.data());
    cpu_ref::MatVec(*w.attn_q, h.data(), qt);
    cpu_ref::MatVec(*w.attn_k, h.data(), k);
    cpu_ref::MatVec(*w.attn_v, h.data(), val);
    AddInPlace(v.q_bias, qt);
    AddInPlace(v.k_bias, k);
    AddInPlace(v.v_bias, val);
    cpu_ref::ApplyRope(c, small_.rope_freqs, position, c.num_heads, qt);
    cpu_ref::ApplyRope(c, small_.rope_freqs, position, c.num_kv_heads, k);
  }

  for (int64_t t = 0; t < num_tokens; ++t) {
    float* xt = x + t * hidden;
    const int64_t num_positions = first_position + t + 1;
    cpu_ref::Attention(q.data() + t * c.q_dim(), cache->key(layer, 0), cache->value(layer, 0),
                       num_positions, c.num_heads, c.num_kv_heads, c.head_dim, attn.data());
    cpu_ref::MatVec(*w.attn_output, attn.data(), delta.data());
    for (int64_t i = 0; i < hidden; ++i) xt[i] += delta[static_cast<size_t>(i)];

    cpu_ref::RmsNorm(xt, v.ffn_norm.data(), hidden, c.rms_norm_eps, h.data());
    cpu_ref::MatVec(*w.ffn_gate, h.data(), gate.data());
    cpu_ref::MatVec(*w.ffn_up, h.data(), up.data());
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = cpu_ref::Silu(gate[i]) * up[i];
    cpu_ref::MatVec(*w.ffn_down, gate.data(), delta.data());
    for (int64_t i = 0; i < hidden; ++i) xt[i] += delta[static_cast<size_t>(i)];
  }
}

absl::StatusOr<std::vector<float>> CpuModel::Forward(absl::Span<const int32_t> tokens,
                                                     CpuKvCache* cache, bool all_logits) const {
  const ModelConfig& c = config_;
  if (tokens.empty()) return absl::InvalidArgumentError("Forward: no tokens");
  if (cache == nullptr) return absl::InvalidArgumentError("Forward: null KV cache");
  if (cache->num_layers() != c.num_layers || cache->kv_dim() != c.kv_dim()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: KV cache built for ", cache->num_layers(), " layers x ",
                     cache->kv_dim(), " kv dims, the model has ", c.num_layers, " x ", c.kv_dim()));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: token ", i, " has id ", tokens[i],
                                                     ", outside [0, ", c.vocab_size, ")"));
    }
  }
  const int64_t num_tokens = static_cast<int64_t>(tokens.size());
  const int64_t first_position = cache->num_tokens();
  const int64_t end = first_position + num_tokens;
  if (end > cache->max_tokens()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: ", num_tokens, " tokens after ", first_position,
                     " cached exceed the KV cache capacity of ", cache->max_tokens()));
  }
  if (end > c.context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: ", num_tokens, " tokens after ", first_position,
                     " cached exceed the model's context length of ", c.context_length));
  }

  const int64_t hidden = c.hidden_dim;
  std::vector<float> x(static_cast<size_t>(num_tokens * hidden));  // [num_tokens, hidden]
  for (int64_t t = 0; t < num_tokens; ++t) {
    DequantizeRow(weights_.token_embd->type, RowPointer(*weights_.token_embd, tokens[t]),
                  x.data() + t * hidden, hidden);
  }
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    RunLayer(layer, first_position, num_tokens, x.data(), cache);
  }
  cache->num_tokens_ = end;

  const int64_t first_logit_token = all_logits ? 0 : num_tokens - 1;
  std::vector<float> logits(static_cast<size_t>((num_tokens - first_logit_token) * c.vocab_size));
  std::vector<float> h(static_cast<size_t>(hidden));
  for (int64_t t = first_logit_token; t < num_tokens; ++t) {
    cpu_ref::RmsNorm(x.data() + t * hidden, small_.output_norm.data(), hidden, c.rms_norm_eps,
                     h.data());
    cpu_ref::MatVec(*weights_.output, h.data(),
                    logits.data() + (t - first_logit_token) * c.vocab_size);
  }
  return logits;
}

}  // namespace duet
