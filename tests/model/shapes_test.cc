#include "common/model/shapes.h"

#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet {
namespace {

using ::testing::HasSubstr;

TEST(ShapesTest, FindsEveryNamedShape) {
  for (const char* name :
       {"tiny", "tiny-4k", "smollm2-135m", "tinyllama-1.1b", "llama-3.2-1b", "qwen2.5-0.5b"}) {
    absl::StatusOr<ModelShape> shape = FindShape(name);
    ASSERT_TRUE(shape.ok()) << shape.status();
    EXPECT_EQ(shape->name, name);
    EXPECT_FALSE(shape->display_name.empty());
    EXPECT_EQ(shape->num_heads % shape->num_kv_heads, 0) << name;
    EXPECT_EQ(shape->hidden_dim, shape->num_heads * shape->head_dim) << name;
  }
  EXPECT_EQ(AllShapes().size(), 6u);
}

TEST(ShapesTest, UnknownShapeListsValidNames) {
  absl::StatusOr<ModelShape> shape = FindShape("gpt-5");
  ASSERT_FALSE(shape.ok());
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(shape.status().message(), HasSubstr("'gpt-5'"));
  EXPECT_THAT(shape.status().message(),
              HasSubstr("tiny, tiny-4k, smollm2-135m, tinyllama-1.1b, llama-3.2-1b, qwen2.5-0.5b"));
}

// The numbers come from each model's public config.json.
TEST(ShapesTest, MatchesPublicConfigs) {
  ModelShape s = *FindShape("smollm2-135m");
  EXPECT_EQ(s.architecture, Architecture::kLlama);
  EXPECT_EQ(s.hidden_dim, 576);
  EXPECT_EQ(s.num_layers, 30);
  EXPECT_EQ(s.num_heads, 9);
  EXPECT_EQ(s.num_kv_heads, 3);
  EXPECT_EQ(s.head_dim, 64);
  EXPECT_EQ(s.ffn_dim, 1536);
  EXPECT_EQ(s.vocab_size, 49152);
  EXPECT_EQ(s.context_length, 8192);
  EXPECT_EQ(s.rope_theta, 100000.0f);
  EXPECT_EQ(s.rms_norm_eps, 1e-5f);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_FALSE(s.qkv_bias);
  EXPECT_FALSE(s.llama3_rope.enabled);

  s = *FindShape("tinyllama-1.1b");
  EXPECT_EQ(s.hidden_dim, 2048);
  EXPECT_EQ(s.num_layers, 22);
  EXPECT_EQ(s.num_heads, 32);
  EXPECT_EQ(s.num_kv_heads, 4);
  EXPECT_EQ(s.ffn_dim, 5632);
  EXPECT_EQ(s.vocab_size, 32000);
  EXPECT_EQ(s.context_length, 2048);
  EXPECT_EQ(s.rope_theta, 10000.0f);
  EXPECT_FALSE(s.tied_embeddings);

  s = *FindShape("llama-3.2-1b");
  EXPECT_EQ(s.hidden_dim, 2048);
  EXPECT_EQ(s.num_layers, 16);
  EXPECT_EQ(s.num_heads, 32);
  EXPECT_EQ(s.num_kv_heads, 8);
  EXPECT_EQ(s.ffn_dim, 8192);
  EXPECT_EQ(s.vocab_size, 128256);
  EXPECT_EQ(s.context_length, 131072);
  EXPECT_EQ(s.rope_theta, 500000.0f);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_TRUE(s.llama3_rope.enabled);
  EXPECT_EQ(s.llama3_rope.factor, 32.0f);
  EXPECT_EQ(s.llama3_rope.low_freq_factor, 1.0f);
  EXPECT_EQ(s.llama3_rope.high_freq_factor, 4.0f);
  EXPECT_EQ(s.llama3_rope.original_context, 8192);

  s = *FindShape("qwen2.5-0.5b");
  EXPECT_EQ(s.architecture, Architecture::kQwen2);
  EXPECT_EQ(s.hidden_dim, 896);
  EXPECT_EQ(s.num_layers, 24);
  EXPECT_EQ(s.num_heads, 14);
  EXPECT_EQ(s.num_kv_heads, 2);
  EXPECT_EQ(s.ffn_dim, 4864);
  EXPECT_EQ(s.vocab_size, 151936);
  EXPECT_EQ(s.context_length, 32768);
  EXPECT_EQ(s.rope_theta, 1000000.0f);
  EXPECT_EQ(s.rms_norm_eps, 1e-6f);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_TRUE(s.qkv_bias);

  s = *FindShape("tiny");
  EXPECT_EQ(s.vocab_size, kBuiltinVocabSize);
  EXPECT_EQ(s.hidden_dim, 64);
  EXPECT_EQ(s.num_layers, 2);
  EXPECT_EQ(s.num_heads, 4);
  EXPECT_EQ(s.num_kv_heads, 2);
  EXPECT_EQ(s.head_dim, 16);
  EXPECT_EQ(s.ffn_dim, 128);
  EXPECT_EQ(s.context_length, 512);
}

TEST(ShapesTest, ParameterCountsMatchThePublishedModels) {
  // tiny by hand: token_embd and output 260 * 64 = 16640 each; per layer q 64*64, k and v
  // 64*32, o 64*64, gate/up/down 64*128, two norms of 64 = 36992; output_norm 64.
  EXPECT_EQ(ParameterCount(*FindShape("tiny")), 2 * 16640 + 2 * 36992 + 64);
  // Hugging Face's num_parameters() of each model.
  EXPECT_EQ(ParameterCount(*FindShape("smollm2-135m")), 134515008);
  EXPECT_EQ(ParameterCount(*FindShape("tinyllama-1.1b")), 1100048384);
  EXPECT_EQ(ParameterCount(*FindShape("llama-3.2-1b")), 1235814400);
  EXPECT_EQ(ParameterCount(*FindShape("qwen2.5-0.5b")), 494032768);
}

TEST(ShapesTest, LayoutNamesAndShapesTensorsAsLlamaCpp) {
  const ModelShape tiny = *FindShape("tiny");
  std::vector<TensorSpec> layout = TensorLayout(tiny);
  ASSERT_EQ(layout.size(), 1u + 2 * 9 + 2);
  EXPECT_EQ(layout[0].name, "token_embd.weight");
  EXPECT_EQ(layout[0].shape, (std::vector<int64_t>{64, 260}));
  EXPECT_EQ(layout[1].name, "blk.0.attn_norm.weight");
  EXPECT_EQ(layout[1].shape, (std::vector<int64_t>{64}));
  EXPECT_EQ(layout[2].name, "blk.0.attn_q.weight");
  EXPECT_EQ(layout[2].shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(layout[3].name, "blk.0.attn_k.weight");
  EXPECT_EQ(layout[3].shape, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(layout[4].name, "blk.0.attn_v.weight");
  EXPECT_EQ(layout[5].name, "blk.0.attn_output.weight");
  EXPECT_EQ(layout[5].role, TensorRole::kResidualOut);
  EXPECT_EQ(layout[6].name, "blk.0.ffn_norm.weight");
  EXPECT_EQ(layout[7].name, "blk.0.ffn_gate.weight");
  EXPECT_EQ(layout[7].shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(layout[8].name, "blk.0.ffn_up.weight");
  EXPECT_EQ(layout[9].name, "blk.0.ffn_down.weight");
  EXPECT_EQ(layout[9].shape, (std::vector<int64_t>{128, 64}));
  EXPECT_EQ(layout[9].layer, 0);
  EXPECT_EQ(layout[10].name, "blk.1.attn_norm.weight");
  EXPECT_EQ(layout[19].name, "output_norm.weight");
  EXPECT_EQ(layout[20].name, "output.weight");
  EXPECT_EQ(layout[20].shape, (std::vector<int64_t>{64, 260}));

  std::set<std::string> names;
  for (const TensorSpec& t : TensorLayout(*FindShape("qwen2.5-0.5b"))) names.insert(t.name);
  EXPECT_TRUE(names.count("blk.23.attn_q.bias"));
  EXPECT_TRUE(names.count("blk.0.attn_k.bias"));
  EXPECT_TRUE(names.count("blk.0.attn_v.bias"));
  EXPECT_FALSE(names.count("output.weight"));  // tied
  EXPECT_FALSE(names.count("rope_freqs.weight"));

  layout = TensorLayout(*FindShape("llama-3.2-1b"));
  EXPECT_EQ(layout[0].name, "rope_freqs.weight");
  EXPECT_EQ(layout[0].shape, (std::vector<int64_t>{32}));
  EXPECT_EQ(layout.back().name, "output_norm.weight");
}

TEST(ShapesTest, Llama3RopeFactorsFollowLlamaCpp) {
  // Wavelengths 2*pi*500000^(2i/64): below 8192/4 = 2048 -> 1, above 8192 -> 32; i = 15, 16,
  // 17 (wavelengths 2948, 4443, 6695) blend: 1 / ((1 - s) / 32 + s), s = (8192/wl - 1) / 3.
  const std::vector<float> f = Llama3RopeFreqFactors(*FindShape("llama-3.2-1b"));
  ASSERT_EQ(f.size(), 32u);
  for (int i = 0; i <= 14; ++i) EXPECT_EQ(f[i], 1.0f) << i;
  EXPECT_NEAR(f[15], 1.65133f, 1e-4);
  EXPECT_NEAR(f[16], 3.29226f, 1e-4);
  EXPECT_NEAR(f[17], 9.66673f, 1e-3);
  for (int i = 18; i < 32; ++i) EXPECT_EQ(f[i], 32.0f) << i;
}

TEST(ShapesTest, ToModelConfigCarriesEveryField) {
  for (const ModelShape& shape : AllShapes()) {
    const ModelConfig c = ToModelConfig(shape);
    EXPECT_EQ(c.architecture_name, ArchitectureName(shape.architecture));
    EXPECT_EQ(c.rope_layout,
              shape.architecture == Architecture::kQwen2 ? RopeLayout::kNeox : RopeLayout::kNormal);
    EXPECT_EQ(c.rope_dim, shape.head_dim);
    EXPECT_EQ(c.has_rope_freq_factors, shape.llama3_rope.enabled);
    EXPECT_EQ(c.tied_embeddings, shape.tied_embeddings);
    EXPECT_EQ(c.qkv_bias, shape.qkv_bias);
    EXPECT_EQ(c.kv_dim(), shape.kv_dim());
  }
}

}  // namespace
}  // namespace duet
