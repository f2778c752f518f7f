#include "common/model/model_config.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/model/gguf.h"
#include "common/model/model_weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/tiny_model.h"

namespace duet {
namespace {

using ::testing::HasSubstr;
using tiny::TinyModelSpec;
using tiny::TinyTensor;

// Metadata with one key replaced (value set) or removed (value absent).
std::vector<std::pair<std::string, GgufValue>> EditMetadata(
    std::vector<std::pair<std::string, GgufValue>> metadata, const std::string& key,
    const GgufValue* value) {
  for (auto it = metadata.begin(); it != metadata.end(); ++it) {
    if (it->first != key) continue;
    if (value == nullptr) {
      metadata.erase(it);
    } else {
      it->second = *value;
    }
    return metadata;
  }
  if (value != nullptr) metadata.emplace_back(key, *value);
  return metadata;
}

absl::StatusOr<ModelConfig> ConfigFrom(const std::vector<std::pair<std::string, GgufValue>>& meta,
                                       const std::vector<TinyTensor>& tensors) {
  DUET_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, tiny::WriteTinyGguf(meta, tensors));
  DUET_ASSIGN_OR_RETURN(std::shared_ptr<const GgufFile> file, tiny::ParseOwned(std::move(bytes)));
  return ModelConfigFromGguf(*file);
}

absl::StatusOr<ModelConfig> ConfigFrom(const TinyModelSpec& spec) {
  return ConfigFrom(tiny::TinyMetadata(spec), tiny::RandomTinyTensors(spec));
}

TEST(ModelConfigTest, LlamaWithGqaAndLinearRopeScaling) {
  TinyModelSpec spec;
  spec.num_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 8;
  spec.rope_linear_factor = 4.0f;
  spec.rope_theta = 500000.0f;
  spec.context_length = 128;
  absl::StatusOr<ModelConfig> config = ConfigFrom(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, Architecture::kLlama);
  EXPECT_EQ(config->architecture_name, "llama");
  EXPECT_EQ(config->name, "tiny");
  EXPECT_EQ(config->vocab_size, 40);  // From token_embd: no vocab_size key, no tokens.
  EXPECT_EQ(config->hidden_dim, 64);
  EXPECT_EQ(config->num_layers, 2);
  EXPECT_EQ(config->num_heads, 8);
  EXPECT_EQ(config->num_kv_heads, 2);
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->q_dim(), 64);
  EXPECT_EQ(config->kv_dim(), 16);
  EXPECT_EQ(config->ffn_dim, 96);
  EXPECT_EQ(config->context_length, 128);
  EXPECT_FLOAT_EQ(config->rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(config->rope_theta, 500000.0f);
  EXPECT_EQ(config->rope_dim, 8);
  EXPECT_EQ(config->rope_layout, RopeLayout::kNormal);
  EXPECT_EQ(config->rope_scaling, RopeScalingType::kLinear);
  EXPECT_FLOAT_EQ(config->rope_scaling_factor, 4.0f);
  EXPECT_FALSE(config->tied_embeddings);
  EXPECT_FALSE(config->qkv_bias);
  EXPECT_FALSE(config->has_rope_freq_factors);
}

TEST(ModelConfigTest, LlamaTiedEmbeddingsDefaultsAndFreqFactors) {
  TinyModelSpec spec;
  spec.tied_embeddings = true;
  spec.num_kv_heads = 4;
  spec.rope_freq_factors = true;
  std::vector<std::pair<std::string, GgufValue>> meta = tiny::TinyMetadata(spec);
  // Without head_count_kv and freq_base the defaults apply; vocab_size overrides token_embd.
  meta = EditMetadata(meta, "llama.attention.head_count_kv", nullptr);
  meta = EditMetadata(meta, "llama.rope.freq_base", nullptr);
  absl::StatusOr<ModelConfig> config = ConfigFrom(meta, tiny::RandomTinyTensors(spec));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->tied_embeddings);
  EXPECT_TRUE(config->has_rope_freq_factors);
  EXPECT_EQ(config->num_kv_heads, 4);
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_FLOAT_EQ(config->rope_theta, 10000.0f);
  EXPECT_EQ(config->rope_scaling, RopeScalingType::kNone);
  EXPECT_FLOAT_EQ(config->rope_scaling_factor, 1.0f);
}

TEST(ModelConfigTest, VocabSizeFromTokenizerTokens) {
  TinyModelSpec spec;
  std::vector<std::pair<std::string, GgufValue>> meta = tiny::TinyMetadata(spec);
  GgufArray tokens{GgufType::kString, {}};
  for (int i = 0; i < 40; ++i) tokens.items.emplace_back(std::to_string(i));
  meta.emplace_back("tokenizer.ggml.tokens", GgufValue(std::move(tokens)));
  absl::StatusOr<ModelConfig> config = ConfigFrom(meta, tiny::RandomTinyTensors(spec));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->vocab_size, 40);
}

TEST(ModelConfigTest, Qwen2HasBiasAndNeoxRope) {
  TinyModelSpec spec;
  spec.architecture = "qwen2";
  spec.tied_embeddings = true;
  spec.rope_theta = 1000000.0f;
  absl::StatusOr<ModelConfig> config = ConfigFrom(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, Architecture::kQwen2);
  EXPECT_EQ(config->architecture_name, "qwen2");
  EXPECT_EQ(config->rope_layout, RopeLayout::kNeox);
  EXPECT_TRUE(config->qkv_bias);
  EXPECT_TRUE(config->tied_embeddings);
  EXPECT_FLOAT_EQ(config->rope_theta, 1000000.0f);

  // Binding finds the biases.
  absl::StatusOr<std::shared_ptr<const GgufFile>> file =
      tiny::BuildTinyFile(spec, tiny::RandomTinyTensors(spec));
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<ModelWeights> weights = BindWeights(**file, *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ASSERT_EQ(weights->layers.size(), 2u);
  ASSERT_NE(weights->layers[1].attn_k_bias, nullptr);
  EXPECT_EQ(weights->layers[1].attn_k_bias->name, "blk.1.attn_k.bias");
  EXPECT_EQ(weights->output, weights->token_embd);
  EXPECT_EQ(weights->rope_freqs, nullptr);
}

TEST(ModelConfigTest, HeadDimFromKeyLengthAndPartialRope) {
  TinyModelSpec spec;
  spec.num_heads = 2;
  spec.num_kv_heads = 1;
  spec.head_dim = 48;  // q_dim 96 != hidden 64
  spec.rope_dim = 32;
  absl::StatusOr<ModelConfig> config = ConfigFrom(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 48);
  EXPECT_EQ(config->q_dim(), 96);
  EXPECT_EQ(config->rope_dim, 32);
}

TEST(ModelConfigTest, UnknownArchitectureIsNamed) {
  TinyModelSpec spec;
  const GgufValue gpt2("gpt2");
  absl::StatusOr<ModelConfig> config =
      ConfigFrom(EditMetadata(tiny::TinyMetadata(spec), "general.architecture", &gpt2),
                 tiny::RandomTinyTensors(spec));
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(),
              HasSubstr("architecture 'gpt2' is not supported (supported: llama, qwen2)"));
}

TEST(ModelConfigTest, MissingKeysAreNamed) {
  TinyModelSpec spec;
  for (const char* key : {"general.architecture", "llama.embedding_length", "llama.block_count",
                          "llama.feed_forward_length", "llama.attention.head_count",
                          "llama.attention.layer_norm_rms_epsilon", "llama.context_length"}) {
    absl::StatusOr<ModelConfig> config = ConfigFrom(
        EditMetadata(tiny::TinyMetadata(spec), key, nullptr), tiny::RandomTinyTensors(spec));
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_THAT(config.status().message(), HasSubstr(key));
  }
}

TEST(ModelConfigTest, IllTypedKeyIsNamed) {
  TinyModelSpec spec;
  const GgufValue text("sixty-four");
  absl::StatusOr<ModelConfig> config =
      ConfigFrom(EditMetadata(tiny::TinyMetadata(spec), "llama.embedding_length", &text),
                 tiny::RandomTinyTensors(spec));
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("llama.embedding_length"));
}

TEST(ModelConfigTest, InconsistentHeadsAreRejected) {
  TinyModelSpec spec;
  const GgufValue three(uint32_t{3});
  absl::StatusOr<ModelConfig> config =
      ConfigFrom(EditMetadata(tiny::TinyMetadata(spec), "llama.attention.head_count_kv", &three),
                 tiny::RandomTinyTensors(spec));
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("not a multiple of"));

  // 64 is not divisible by 6 heads and no key_length says otherwise.
  const GgufValue six(uint32_t{6});
  config = ConfigFrom(EditMetadata(tiny::TinyMetadata(spec), "llama.attention.head_count", &six),
                      tiny::RandomTinyTensors(spec));
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("llama.attention.head_count"));

  // More KV heads than query heads.
  const GgufValue eight(uint32_t{8});
  config =
      ConfigFrom(EditMetadata(tiny::TinyMetadata(spec), "llama.attention.head_count_kv", &eight),
                 tiny::RandomTinyTensors(spec));
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("llama.attention.head_count_kv"));
}

TEST(ModelConfigTest, UnsupportedRopeScalingIsNamed) {
  TinyModelSpec spec;
  const GgufValue yarn("yarn");
  absl::StatusOr<ModelConfig> config =
      ConfigFrom(EditMetadata(tiny::TinyMetadata(spec), "llama.rope.scaling.type", &yarn),
                 tiny::RandomTinyTensors(spec));
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("'yarn'"));
}

TEST(BindWeightsTest, MissingTensorAndWrongShapeAreNamed) {
  TinyModelSpec spec;
  std::vector<TinyTensor> tensors = tiny::RandomTinyTensors(spec);
  absl::StatusOr<ModelConfig> config = ConfigFrom(spec);
  ASSERT_TRUE(config.ok()) << config.status();

  std::vector<TinyTensor> missing;
  for (const TinyTensor& t : tensors) {
    if (t.name != "blk.1.ffn_gate.weight") missing.push_back(t);
  }
  absl::StatusOr<std::shared_ptr<const GgufFile>> file = tiny::BuildTinyFile(spec, missing);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<ModelWeights> weights = BindWeights(**file, *config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(weights.status().message(), HasSubstr("missing tensor blk.1.ffn_gate.weight"));

  std::vector<TinyTensor> reshaped = tensors;
  TinyTensor* k = tiny::FindTinyTensor(reshaped, "blk.0.attn_k.weight");
  ASSERT_NE(k, nullptr);
  k->shape = {spec.kv_dim(), spec.hidden_dim};  // Transposed: {32, 64} instead of {64, 32}.
  file = tiny::BuildTinyFile(spec, reshaped);
  ASSERT_TRUE(file.ok()) << file.status();
  weights = BindWeights(**file, *config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(weights.status().message(),
              HasSubstr("tensor blk.0.attn_k.weight has shape {32, 64}, expected {64, 32}"));
}

TEST(BindWeightsTest, QuantizedNormIsRejected) {
  TinyModelSpec spec;
  spec.hidden_dim = 64;
  absl::StatusOr<ModelConfig> config = ConfigFrom(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::shared_ptr<const GgufFile>> file =
      tiny::BuildTinyFile(spec, tiny::RandomTinyTensors(spec), GgmlType::kF32, GgmlType::kQ8_0);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<ModelWeights> weights = BindWeights(**file, *config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(weights.status().message(),
              HasSubstr("tensor output_norm.weight has type q8_0, which is not supported "
                        "(supported: f32, f16, bf16)"));
}

// Rewrites the on-disk type id of tensor `name` in a serialized GGUF file. The tensor info is
// the name, u32 n_dims, u64 ne[n_dims], then the u32 type.
void PatchTensorType(std::vector<uint8_t>* bytes, const std::string& name, uint32_t type) {
  const auto it = std::search(bytes->begin(), bytes->end(), name.begin(), name.end());
  ASSERT_NE(it, bytes->end());
  size_t pos = static_cast<size_t>(it - bytes->begin()) + name.size();
  uint32_t n_dims = 0;
  std::memcpy(&n_dims, bytes->data() + pos, sizeof(n_dims));
  pos += sizeof(n_dims) + 8 * n_dims;
  std::memcpy(bytes->data() + pos, &type, sizeof(type));
}

TEST(BindWeightsTest, UnsupportedTensorTypeIsNamed) {
  // q4_k needs rows of 256 elements; its blocks are smaller than f32's, so the patched tensor
  // still lies inside the file.
  TinyModelSpec spec;
  spec.hidden_dim = 256;
  spec.num_heads = 2;
  spec.num_kv_heads = 1;
  spec.head_dim = 128;
  spec.ffn_dim = 32;
  spec.vocab_size = 8;
  spec.num_layers = 1;
  absl::StatusOr<std::vector<uint8_t>> bytes =
      tiny::WriteTinyGguf(tiny::TinyMetadata(spec), tiny::RandomTinyTensors(spec));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  PatchTensorType(&*bytes, "blk.0.ffn_up.weight", static_cast<uint32_t>(GgmlType::kQ4_K));
  absl::StatusOr<std::shared_ptr<const GgufFile>> file = tiny::ParseOwned(std::move(*bytes));
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(**file);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ModelWeights> weights = BindWeights(**file, *config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(weights.status().message(),
              HasSubstr("tensor blk.0.ffn_up.weight has type q4_K, which is not supported "
                        "(supported: f32, f16, bf16, q8_0, q4_0)"));
}

}  // namespace
}  // namespace duet
