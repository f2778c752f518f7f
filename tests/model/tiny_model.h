// Test-only helpers: tiny llama/qwen2 GGUF models built in memory with seeded random weights,
// for the model config and CPU forward tests.
//
// Tensor values are generated as f32 first (TinyTensor), so a test can transform them (round-trip
// through a quantized type, replicate K/V heads) or compute a naive forward from them, and then
// encode them to GGUF in any supported type.
#ifndef DUET_TESTS_MODEL_TINY_MODEL_H_
#define DUET_TESTS_MODEL_TINY_MODEL_H_

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/model/ggml_types.h"
#include "common/model/gguf.h"
#include "common/model/gguf_writer.h"
#include "common/model/quant.h"

namespace duet::tiny {

struct TinyModelSpec {
  std::string architecture = "llama";
  int64_t vocab_size = 40;
  int64_t hidden_dim = 64;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  int64_t head_dim = 16;  // Written as attention.key_length only when != hidden / heads.
  int64_t ffn_dim = 96;
  int64_t context_length = 64;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int64_t rope_dim = 0;          // 0: not written (defaults to head_dim).
  float rope_linear_factor = 0;  // 0: no rope.scaling keys.
  bool tied_embeddings = false;
  bool qkv_bias = false;  // Written for llama only when set; qwen2 always has biases.
  bool rope_freq_factors = false;
  uint64_t seed = 1;

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t rotated_dims() const { return rope_dim > 0 ? rope_dim : head_dim; }
  bool has_bias() const { return qkv_bias || architecture == "qwen2"; }
};

// One tensor's f32 values. For a 2-D tensor {in, out}, values[r * in + c] is row r, column c.
struct TinyTensor {
  std::string name;
  std::vector<int64_t> shape;  // ggml order
  std::vector<float> values;
  bool matrix = false;  // 2-D weight (stored in the matrix type) vs 1-D vector.
};

// splitmix64: a portable, seeded stream of uniforms in [-1, 1).
class TinyRng {
 public:
  explicit TinyRng(uint64_t seed) : state_(seed) {}
  float Uniform() {
    state_ += 0x9e3779b97f4a7c15ull;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  }

 private:
  uint64_t state_;
};

inline std::vector<std::pair<std::string, GgufValue>> TinyMetadata(const TinyModelSpec& s) {
  const std::string& a = s.architecture;
  std::vector<std::pair<std::string, GgufValue>> m;
  auto u32 = [](int64_t v) { return GgufValue(static_cast<uint32_t>(v)); };
  m.emplace_back("general.architecture", GgufValue(a));
  m.emplace_back("general.name", GgufValue("tiny"));
  m.emplace_back(a + ".context_length", u32(s.context_length));
  m.emplace_back(a + ".embedding_length", u32(s.hidden_dim));
  m.emplace_back(a + ".block_count", u32(s.num_layers));
  m.emplace_back(a + ".feed_forward_length", u32(s.ffn_dim));
  m.emplace_back(a + ".attention.head_count", u32(s.num_heads));
  m.emplace_back(a + ".attention.head_count_kv", u32(s.num_kv_heads));
  if (s.head_dim * s.num_heads != s.hidden_dim) {
    m.emplace_back(a + ".attention.key_length", u32(s.head_dim));
    m.emplace_back(a + ".attention.value_length", u32(s.head_dim));
  }
  m.emplace_back(a + ".attention.layer_norm_rms_epsilon", GgufValue(s.rms_norm_eps));
  m.emplace_back(a + ".rope.freq_base", GgufValue(s.rope_theta));
  if (s.rope_dim > 0) m.emplace_back(a + ".rope.dimension_count", u32(s.rope_dim));
  if (s.rope_linear_factor != 0) {
    m.emplace_back(a + ".rope.scaling.type", GgufValue("linear"));
    m.emplace_back(a + ".rope.scaling.factor", GgufValue(s.rope_linear_factor));
  }
  return m;
}

// Weights scaled so activations stay O(1): matrices ~ U(+-sqrt(3 / fan_in)) (residual
// projections further / sqrt(2 * layers)), norms ~ 1 + U(+-0.1), biases ~ U(+-0.2).
inline std::vector<TinyTensor> RandomTinyTensors(const TinyModelSpec& s) {
  std::vector<TinyTensor> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float offset) {
    TinyRng rng(s.seed * 0x100000001b3ull + tensors.size() * 7919 + 17);
    TinyTensor t{name, shape, {}, shape.size() == 2};
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    t.values.resize(static_cast<size_t>(n));
    for (float& v : t.values) v = offset + scale * rng.Uniform();
    tensors.push_back(std::move(t));
  };
  auto fan_in = [](int64_t in) { return static_cast<float>(std::sqrt(3.0 / in)); };
  const float residual = 1.0f / static_cast<float>(std::sqrt(2.0 * s.num_layers));
  add("token_embd.weight", {s.hidden_dim, s.vocab_size}, 1.0f, 0.0f);
  add("output_norm.weight", {s.hidden_dim}, 0.1f, 1.0f);
  if (!s.tied_embeddings) {
    add("output.weight", {s.hidden_dim, s.vocab_size}, fan_in(s.hidden_dim), 0);
  }
  if (s.rope_freq_factors) add("rope_freqs.weight", {s.rotated_dims() / 2}, 1.0f, 2.0f);
  for (int64_t l = 0; l < s.num_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    add(p + "attn_norm.weight", {s.hidden_dim}, 0.1f, 1.0f);
    add(p + "attn_q.weight", {s.hidden_dim, s.q_dim()}, fan_in(s.hidden_dim), 0);
    add(p + "attn_k.weight", {s.hidden_dim, s.kv_dim()}, fan_in(s.hidden_dim), 0);
    add(p + "attn_v.weight", {s.hidden_dim, s.kv_dim()}, fan_in(s.hidden_dim), 0);
    if (s.has_bias()) {
      add(p + "attn_q.bias", {s.q_dim()}, 0.2f, 0);
      add(p + "attn_k.bias", {s.kv_dim()}, 0.2f, 0);
      add(p + "attn_v.bias", {s.kv_dim()}, 0.2f, 0);
    }
    add(p + "attn_output.weight", {s.q_dim(), s.hidden_dim}, fan_in(s.q_dim()) * residual, 0);
    add(p + "ffn_norm.weight", {s.hidden_dim}, 0.1f, 1.0f);
    add(p + "ffn_gate.weight", {s.hidden_dim, s.ffn_dim}, fan_in(s.hidden_dim), 0);
    add(p + "ffn_up.weight", {s.hidden_dim, s.ffn_dim}, fan_in(s.hidden_dim), 0);
    add(p + "ffn_down.weight", {s.ffn_dim, s.hidden_dim}, fan_in(s.ffn_dim) * residual, 0);
  }
  return tensors;
}

inline TinyTensor* FindTinyTensor(std::vector<TinyTensor>& tensors, const std::string& name) {
  for (TinyTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// The values `type` stores for `values` (rows of shape[0] elements): quantize, then dequantize.
inline std::vector<float> RoundTrip(GgmlType type, const TinyTensor& t) {
  const int64_t row = t.shape[0];
  const int64_t rows = static_cast<int64_t>(t.values.size()) / row;
  std::vector<uint8_t> encoded(static_cast<size_t>(GgmlRowBytes(type, row)));
  std::vector<float> out(t.values.size());
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(type, t.values.data() + r * row, encoded.data(), row);
    DequantizeRow(type, encoded.data(), out.data() + r * row, row);
  }
  return out;
}

// Encodes every tensor: 2-D ones as `matrix_type`, 1-D ones as `vector_type`.
inline absl::StatusOr<std::vector<uint8_t>> WriteTinyGguf(
    const std::vector<std::pair<std::string, GgufValue>>& metadata,
    const std::vector<TinyTensor>& tensors, GgmlType matrix_type = GgmlType::kF32,
    GgmlType vector_type = GgmlType::kF32) {
  GgufWriter writer;
  for (const auto& [key, value] : metadata) writer.Set(key, value);
  for (const TinyTensor& t : tensors) {
    const GgmlType type = t.matrix ? matrix_type : vector_type;
    const int64_t row = t.shape[0];
    const int64_t rows = static_cast<int64_t>(t.values.size()) / row;
    const int64_t row_bytes = GgmlRowBytes(type, row);
    std::vector<uint8_t> data(static_cast<size_t>(row_bytes * rows));
    for (int64_t r = 0; r < rows; ++r) {
      QuantizeRow(type, t.values.data() + r * row, data.data() + r * row_bytes, row);
    }
    DUET_RETURN_IF_ERROR(writer.AddTensor(t.name, t.shape, type, std::move(data)));
  }
  return writer.WriteToBuffer();
}

// Parses `bytes` into a file that owns them.
inline absl::StatusOr<std::shared_ptr<const GgufFile>> ParseOwned(std::vector<uint8_t> bytes) {
  struct Owned {
    std::vector<uint8_t> bytes;
    std::unique_ptr<GgufFile> file;
  };
  auto owned = std::make_shared<Owned>();
  owned->bytes = std::move(bytes);
  DUET_ASSIGN_OR_RETURN(owned->file, GgufFile::Parse(owned->bytes));
  const GgufFile* file = owned->file.get();
  return std::shared_ptr<const GgufFile>(std::move(owned), file);
}

// Writes and parses a model in one go.
inline absl::StatusOr<std::shared_ptr<const GgufFile>> BuildTinyFile(
    const TinyModelSpec& spec, const std::vector<TinyTensor>& tensors,
    GgmlType matrix_type = GgmlType::kF32, GgmlType vector_type = GgmlType::kF32) {
  DUET_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes,
                        WriteTinyGguf(TinyMetadata(spec), tensors, matrix_type, vector_type));
  return ParseOwned(std::move(bytes));
}

}  // namespace duet::tiny

#endif  // DUET_TESTS_MODEL_TINY_MODEL_H_
