#include "common/model/shapes.h"

#include <cmath>
#include <numbers>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace duet {
namespace {

std::vector<ModelShape> BuildShapes() {
  std::vector<ModelShape> shapes;

  ModelShape tiny;
  tiny.name = "tiny";
  tiny.display_name = "tiny (synthetic)";
  tiny.vocab_size = kBuiltinVocabSize;
  tiny.hidden_dim = 64;
  tiny.num_layers = 2;
  tiny.num_heads = 4;
  tiny.num_kv_heads = 2;
  tiny.head_dim = 16;
  tiny.ffn_dim = 128;
  tiny.context_length = 512;
  tiny.rms_norm_eps = 1e-5f;
  tiny.rope_theta = 10000.0f;
  shapes.push_back(tiny);

  // Few layers but a real model's width (512, as small LLMs; attention does not dwarf the
  // matmuls at long context the way it would at width 64) and a 4096-token context: for
  // long-prompt workloads (prefix caching benchmarks) that the tiny shape's context cannot
  // hold, still quick on lavapipe.
  ModelShape tiny4k = tiny;
  tiny4k.name = "tiny-4k";
  tiny4k.display_name = "tiny 4k-context (synthetic)";
  tiny4k.hidden_dim = 512;
  tiny4k.num_layers = 4;
  tiny4k.num_heads = 8;
  tiny4k.num_kv_heads = 4;
  tiny4k.head_dim = 64;
  tiny4k.ffn_dim = 1536;
  tiny4k.context_length = 4096;
  shapes.push_back(tiny4k);

  // HuggingFaceTB/SmolLM2-135M config.json.
  ModelShape smollm2;
  smollm2.name = "smollm2-135m";
  smollm2.display_name = "SmolLM2 135M (synthetic)";
  smollm2.vocab_size = 49152;
  smollm2.hidden_dim = 576;
  smollm2.num_layers = 30;
  smollm2.num_heads = 9;
  smollm2.num_kv_heads = 3;
  smollm2.head_dim = 64;
  smollm2.ffn_dim = 1536;
  smollm2.context_length = 8192;
  smollm2.rms_norm_eps = 1e-5f;
  smollm2.rope_theta = 100000.0f;
  smollm2.tied_embeddings = true;
  shapes.push_back(smollm2);

  // TinyLlama/TinyLlama-1.1B config.json.
  ModelShape tinyllama;
  tinyllama.name = "tinyllama-1.1b";
  tinyllama.display_name = "TinyLlama 1.1B (synthetic)";
  tinyllama.vocab_size = 32000;
  tinyllama.hidden_dim = 2048;
  tinyllama.num_layers = 22;
  tinyllama.num_heads = 32;
  tinyllama.num_kv_heads = 4;
  tinyllama.head_dim = 64;
  tinyllama.ffn_dim = 5632;
  tinyllama.context_length = 2048;
  tinyllama.rms_norm_eps = 1e-5f;
  tinyllama.rope_theta = 10000.0f;
  tinyllama.tied_embeddings = false;
  shapes.push_back(tinyllama);

  // meta-llama/Llama-3.2-1B config.json, rope_scaling {rope_type llama3, factor 32,
  // low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192}.
  ModelShape llama32;
  llama32.name = "llama-3.2-1b";
  llama32.display_name = "Llama 3.2 1B (synthetic)";
  llama32.vocab_size = 128256;
  llama32.hidden_dim = 2048;
  llama32.num_layers = 16;
  llama32.num_heads = 32;
  llama32.num_kv_heads = 8;
  llama32.head_dim = 64;
  llama32.ffn_dim = 8192;
  llama32.context_length = 131072;
  llama32.rms_norm_eps = 1e-5f;
  llama32.rope_theta = 500000.0f;
  llama32.tied_embeddings = true;
  llama32.llama3_rope = {.enabled = true,
                         .factor = 32.0f,
                         .low_freq_factor = 1.0f,
                         .high_freq_factor = 4.0f,
                         .original_context = 8192};
  shapes.push_back(llama32);

  // Qwen/Qwen2.5-0.5B config.json.
  ModelShape qwen;
  qwen.name = "qwen2.5-0.5b";
  qwen.display_name = "Qwen2.5 0.5B (synthetic)";
  qwen.architecture = Architecture::kQwen2;
  qwen.vocab_size = 151936;
  qwen.hidden_dim = 896;
  qwen.num_layers = 24;
  qwen.num_heads = 14;
  qwen.num_kv_heads = 2;
  qwen.head_dim = 64;
  qwen.ffn_dim = 4864;
  qwen.context_length = 32768;
  qwen.rms_norm_eps = 1e-6f;
  qwen.rope_theta = 1000000.0f;
  qwen.tied_embeddings = true;
  qwen.qkv_bias = true;
  shapes.push_back(qwen);

  return shapes;
}

}  // namespace

std::string_view ArchitectureName(Architecture architecture) {
  switch (architecture) {
    case Architecture::kLlama:
      return "llama";
    case Architecture::kQwen2:
      return "qwen2";
  }
  return "unknown";
}

const std::vector<ModelShape>& AllShapes() {
  static const std::vector<ModelShape>* const shapes = new std::vector<ModelShape>(BuildShapes());
  return *shapes;
}

std::string ShapeNames() {
  std::vector<std::string> names;
  for (const ModelShape& s : AllShapes()) names.push_back(s.name);
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<ModelShape> FindShape(std::string_view name) {
  for (const ModelShape& s : AllShapes()) {
    if (s.name == name) return s;
  }
  return absl::NotFoundError(
      absl::StrCat("unknown shape '", std::string(name), "' (valid shapes: ", ShapeNames(), ")"));
}

ModelConfig ToModelConfig(const ModelShape& shape) {
  ModelConfig c;
  c.architecture = shape.architecture;
  c.architecture_name = std::string(ArchitectureName(shape.architecture));
  c.name = shape.display_name;
  c.vocab_size = shape.vocab_size;
  c.hidden_dim = shape.hidden_dim;
  c.num_layers = shape.num_layers;
  c.num_heads = shape.num_heads;
  c.num_kv_heads = shape.num_kv_heads;
  c.head_dim = shape.head_dim;
  c.ffn_dim = shape.ffn_dim;
  c.context_length = shape.context_length;
  c.rms_norm_eps = shape.rms_norm_eps;
  c.rope_theta = shape.rope_theta;
  c.rope_dim = shape.head_dim;
  c.rope_layout =
      shape.architecture == Architecture::kQwen2 ? RopeLayout::kNeox : RopeLayout::kNormal;
  c.rope_scaling = RopeScalingType::kNone;
  c.rope_scaling_factor = 1.0f;
  c.rope_original_context = 0;
  c.has_rope_freq_factors = shape.llama3_rope.enabled;
  c.tied_embeddings = shape.tied_embeddings;
  c.qkv_bias = shape.qkv_bias;
  return c;
}

bool RoleStaysF32(TensorRole role) {
  return role == TensorRole::kNorm || role == TensorRole::kBias || role == TensorRole::kRopeFreqs;
}

int64_t TensorSpec::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<TensorSpec> TensorLayout(const ModelShape& shape) {
  const int64_t h = shape.hidden_dim;
  std::vector<TensorSpec> out;
  if (shape.llama3_rope.enabled) {
    out.push_back({"rope_freqs.weight", {shape.head_dim / 2}, TensorRole::kRopeFreqs, -1});
  }
  out.push_back({"token_embd.weight", {h, shape.vocab_size}, TensorRole::kEmbedding, -1});
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    out.push_back({p + "attn_norm.weight", {h}, TensorRole::kNorm, l});
    out.push_back({p + "attn_q.weight", {h, shape.q_dim()}, TensorRole::kProjection, l});
    if (shape.qkv_bias) out.push_back({p + "attn_q.bias", {shape.q_dim()}, TensorRole::kBias, l});
    out.push_back({p + "attn_k.weight", {h, shape.kv_dim()}, TensorRole::kProjection, l});
    if (shape.qkv_bias) out.push_back({p + "attn_k.bias", {shape.kv_dim()}, TensorRole::kBias, l});
    out.push_back({p + "attn_v.weight", {h, shape.kv_dim()}, TensorRole::kProjection, l});
    if (shape.qkv_bias) out.push_back({p + "attn_v.bias", {shape.kv_dim()}, TensorRole::kBias, l});
    out.push_back({p + "attn_output.weight", {shape.q_dim(), h}, TensorRole::kResidualOut, l});
    out.push_back({p + "ffn_norm.weight", {h}, TensorRole::kNorm, l});
    out.push_back({p + "ffn_gate.weight", {h, shape.ffn_dim}, TensorRole::kProjection, l});
    out.push_back({p + "ffn_up.weight", {h, shape.ffn_dim}, TensorRole::kProjection, l});
    out.push_back({p + "ffn_down.weight", {shape.ffn_dim, h}, TensorRole::kResidualOut, l});
  }
  out.push_back({"output_norm.weight", {h}, TensorRole::kNorm, -1});
  if (!shape.tied_embeddings) {
    out.push_back({"output.weight", {h, shape.vocab_size}, TensorRole::kOutput, -1});
  }
  return out;
}

int64_t ParameterCount(const ModelShape& shape) {
  int64_t n = 0;
  for (const TensorSpec& t : TensorLayout(shape)) {
    if (t.role != TensorRole::kRopeFreqs) n += t.num_elements();
  }
  return n;
}

std::vector<float> Llama3RopeFreqFactors(const ModelShape& shape) {
  const Llama3RopeScaling& r = shape.llama3_rope;
  const double old_context = static_cast<double>(r.original_context);
  const double low_freq_wavelen = old_context / r.low_freq_factor;
  const double high_freq_wavelen = old_context / r.high_freq_factor;
  std::vector<float> factors;
  factors.reserve(shape.head_dim / 2);
  for (int64_t i = 0; i < shape.head_dim; i += 2) {
    // convert_hf_to_gguf.py computes the frequencies in float32, then the rest in Python
    // floats (double); the same here.
    const float freq = 1.0f / std::pow(shape.rope_theta,
                                       static_cast<float>(i) / static_cast<float>(shape.head_dim));
    const double wavelen = 2.0 * std::numbers::pi / static_cast<double>(freq);
    double factor;
    if (wavelen < high_freq_wavelen) {
      factor = 1.0;
    } else if (wavelen > low_freq_wavelen) {
      factor = r.factor;
    } else {
      const double smooth =
          (old_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      factor = 1.0 / ((1.0 - smooth) / r.factor + smooth);
    }
    factors.push_back(static_cast<float>(factor));
  }
  return factors;
}

}  // namespace duet
