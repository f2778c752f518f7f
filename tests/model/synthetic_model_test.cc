#include "common/model/synthetic_model.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/model/cpu_forward.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"
#include "common/model/model_weights.h"
#include "common/model/quant.h"
#include "common/model/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet {
namespace {

using ::testing::HasSubstr;

constexpr GgmlType kWeightTypes[] = {GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0,
                                     GgmlType::kQ4_0};

std::string SharedPath(const std::string& relative) {
  return std::string(DUET_SHARED_DIR) + "/" + relative;
}

SyntheticModelOptions Options(const std::string& shape, GgmlType type, uint64_t seed = 1) {
  SyntheticModelOptions o;
  o.shape = *FindShape(shape);
  o.weight_type = type;
  o.seed = seed;
  return o;
}

std::vector<uint8_t> Build(const SyntheticModelOptions& options) {
  absl::StatusOr<GgufWriter> writer = BuildSyntheticModel(options);
  EXPECT_TRUE(writer.ok()) << writer.status();
  if (!writer.ok()) return {};
  absl::StatusOr<std::vector<uint8_t>> bytes = writer->WriteToBuffer();
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *std::move(bytes) : std::vector<uint8_t>{};
}

// A parsed in-memory file that owns its bytes (CpuModel::Load wants a shared GgufFile).
struct OwnedFile {
  std::vector<uint8_t> bytes;
  std::shared_ptr<const GgufFile> file;
};

std::unique_ptr<OwnedFile> BuildAndParse(const SyntheticModelOptions& options) {
  auto owned = std::make_unique<OwnedFile>();
  owned->bytes = Build(options);
  absl::StatusOr<std::unique_ptr<GgufFile>> parsed = GgufFile::Parse(owned->bytes);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return nullptr;
  owned->file = std::move(*parsed);
  return owned;
}

// ---- Determinism ------------------------------------------------------------------------------

TEST(SyntheticModelTest, SameSeedGivesIdenticalBytesAnotherSeedDoesNot) {
  for (GgmlType type : kWeightTypes) {
    const std::vector<uint8_t> a = Build(Options("tiny", type, 7));
    const std::vector<uint8_t> b = Build(Options("tiny", type, 7));
    const std::vector<uint8_t> c = Build(Options("tiny", type, 8));
    ASSERT_FALSE(a.empty());
    EXPECT_EQ(a, b) << GgmlTypeName(type);
    ASSERT_EQ(a.size(), c.size());
    EXPECT_NE(a, c) << GgmlTypeName(type);
  }
}

TEST(SyntheticModelTest, WriteFileMatchesBufferAndPlannedSize) {
  const SyntheticModelOptions options = Options("tiny", GgmlType::kQ8_0, 3);
  const std::string path =
      ::testing::TempDir() + "/synthetic_tiny_" + std::to_string(::getpid()) + ".gguf";
  uint64_t last_done = 0, last_total = 0;
  ASSERT_TRUE(WriteSyntheticModel(options, path, [&](uint64_t done, uint64_t total) {
                EXPECT_GE(done, last_done);
                last_done = done;
                last_total = total;
              }).ok());
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> on_disk((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
  std::filesystem::remove(path);
  EXPECT_EQ(on_disk, Build(options));
  EXPECT_EQ(last_done, on_disk.size());
  EXPECT_EQ(last_total, on_disk.size());
  EXPECT_EQ(BuildSyntheticModel(options)->FileSize(), on_disk.size());
}

// ---- Layout and metadata ----------------------------------------------------------------------

TEST(SyntheticModelTest, PlanIsRightForEveryShape) {
  for (const ModelShape& shape : AllShapes()) {
    for (GgmlType type : kWeightTypes) {
      SyntheticModelOptions options;
      options.shape = shape;
      options.weight_type = type;
      absl::StatusOr<SyntheticModelPlan> plan = PlanSyntheticModel(options);
      ASSERT_TRUE(plan.ok()) << shape.name << ": " << plan.status();
      const std::vector<TensorSpec> layout = TensorLayout(shape);
      ASSERT_EQ(plan->tensors.size(), layout.size());
      int64_t elements = 0;
      for (size_t i = 0; i < layout.size(); ++i) {
        const PlannedTensor& t = plan->tensors[i];
        EXPECT_EQ(t.spec.name, layout[i].name);
        EXPECT_EQ(t.spec.shape, layout[i].shape);
        const bool one_d = t.spec.shape.size() == 1;
        EXPECT_EQ(t.type, one_d ? GgmlType::kF32 : type) << t.spec.name;
        EXPECT_EQ(t.num_bytes, static_cast<uint64_t>(GgmlRowBytes(t.type, t.spec.num_elements())));
        if (t.spec.role != TensorRole::kRopeFreqs) elements += t.spec.num_elements();
      }
      EXPECT_EQ(elements, ParameterCount(shape)) << shape.name;

      std::map<std::string, const GgufValue*> md;
      for (const auto& [key, value] : plan->metadata) md[key] = &value;
      const std::string arch(ArchitectureName(shape.architecture));
      ASSERT_TRUE(md.count("general.architecture"));
      EXPECT_EQ(*md["general.architecture"]->AsString(), arch);
      EXPECT_EQ(*md[arch + ".embedding_length"]->AsInt(), shape.hidden_dim);
      EXPECT_EQ(*md[arch + ".block_count"]->AsInt(), shape.num_layers);
      EXPECT_EQ(*md[arch + ".feed_forward_length"]->AsInt(), shape.ffn_dim);
      EXPECT_EQ(*md[arch + ".attention.head_count"]->AsInt(), shape.num_heads);
      EXPECT_EQ(*md[arch + ".attention.head_count_kv"]->AsInt(), shape.num_kv_heads);
      EXPECT_EQ(*md[arch + ".context_length"]->AsInt(), shape.context_length);
      EXPECT_EQ(*md[arch + ".vocab_size"]->AsInt(), shape.vocab_size);
      EXPECT_EQ(*md[arch + ".rope.dimension_count"]->AsInt(), shape.head_dim);
      EXPECT_FLOAT_EQ(static_cast<float>(*md[arch + ".rope.freq_base"]->AsDouble()),
                      shape.rope_theta);
      EXPECT_FLOAT_EQ(
          static_cast<float>(*md[arch + ".attention.layer_norm_rms_epsilon"]->AsDouble()),
          shape.rms_norm_eps);
      EXPECT_EQ(*md["general.file_type"]->AsInt(), *FileTypeForWeightType(type));
      const GgufArray* tokens = *md["tokenizer.ggml.tokens"]->AsArray();
      EXPECT_EQ(static_cast<int64_t>(tokens->items.size()), shape.vocab_size);

      // The metadata alone (plus rope_freqs, whose presence the config reports) decodes to
      // the shape's config.
      GgufWriter writer;
      for (const auto& [key, value] : plan->metadata) writer.Set(key, value);
      if (shape.llama3_rope.enabled) {
        const std::vector<float> f = Llama3RopeFreqFactors(shape);
        std::vector<uint8_t> data(f.size() * sizeof(float));
        std::memcpy(data.data(), f.data(), data.size());
        ASSERT_TRUE(writer
                        .AddTensor("rope_freqs.weight", {static_cast<int64_t>(f.size())},
                                   GgmlType::kF32, std::move(data))
                        .ok());
      }
      absl::StatusOr<std::vector<uint8_t>> bytes = writer.WriteToBuffer();
      ASSERT_TRUE(bytes.ok()) << bytes.status();
      absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(*bytes);
      ASSERT_TRUE(file.ok()) << file.status();
      absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(**file);
      ASSERT_TRUE(config.ok()) << shape.name << ": " << config.status();
      const ModelConfig want = ToModelConfig(shape);
      EXPECT_EQ(config->architecture, want.architecture);
      EXPECT_EQ(config->name, want.name);
      EXPECT_EQ(config->vocab_size, want.vocab_size);
      EXPECT_EQ(config->hidden_dim, want.hidden_dim);
      EXPECT_EQ(config->num_layers, want.num_layers);
      EXPECT_EQ(config->num_heads, want.num_heads);
      EXPECT_EQ(config->num_kv_heads, want.num_kv_heads);
      EXPECT_EQ(config->head_dim, want.head_dim);
      EXPECT_EQ(config->ffn_dim, want.ffn_dim);
      EXPECT_EQ(config->context_length, want.context_length);
      EXPECT_EQ(config->rms_norm_eps, want.rms_norm_eps);
      EXPECT_EQ(config->rope_theta, want.rope_theta);
      EXPECT_EQ(config->rope_dim, want.rope_dim);
      EXPECT_EQ(config->rope_layout, want.rope_layout);
      EXPECT_EQ(config->rope_scaling, RopeScalingType::kNone);
      EXPECT_EQ(config->has_rope_freq_factors, want.has_rope_freq_factors);
    }
  }
}

TEST(SyntheticModelTest, EveryWeightTypeOfTinyParsesAndBinds) {
  for (GgmlType type : kWeightTypes) {
    std::unique_ptr<OwnedFile> owned = BuildAndParse(Options("tiny", type));
    ASSERT_NE(owned, nullptr);
    const GgufFile& file = *owned->file;
    absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(file);
    ASSERT_TRUE(config.ok()) << config.status();
    const ModelConfig want = ToModelConfig(*FindShape("tiny"));
    EXPECT_EQ(config->architecture, want.architecture);
    EXPECT_EQ(config->vocab_size, 260);
    EXPECT_EQ(config->hidden_dim, want.hidden_dim);
    EXPECT_EQ(config->num_layers, want.num_layers);
    EXPECT_EQ(config->num_heads, want.num_heads);
    EXPECT_EQ(config->num_kv_heads, want.num_kv_heads);
    EXPECT_EQ(config->head_dim, want.head_dim);
    EXPECT_EQ(config->ffn_dim, want.ffn_dim);
    EXPECT_EQ(config->context_length, want.context_length);
    EXPECT_EQ(config->rope_dim, want.rope_dim);
    EXPECT_FALSE(config->tied_embeddings);
    EXPECT_TRUE(BindWeights(file, *config).ok());
    for (const GgufTensorInfo& t : file.tensors()) {
      EXPECT_EQ(t.type, t.shape.size() == 1 ? GgmlType::kF32 : type) << t.name;
    }
    EXPECT_EQ(*file.GetString("general.name"), "tiny (synthetic)");
  }
}

TEST(SyntheticModelTest, ConfigsOfOtherArchitecturesRoundTrip) {
  // qwen2 (biases, NeoX rope, tied) and Llama 3 scaling (rope_freqs), at tiny widths.
  ModelShape qwen = *FindShape("qwen2.5-0.5b");
  ModelShape llama3 = *FindShape("llama-3.2-1b");
  for (ModelShape* s : {&qwen, &llama3}) {
    s->vocab_size = kBuiltinVocabSize;
    s->hidden_dim = 128;
    s->num_heads = 4;
    s->num_kv_heads = 2;
    s->head_dim = 32;
    s->ffn_dim = 256;
    s->num_layers = 2;
  }
  for (const ModelShape* s : {&qwen, &llama3}) {
    SyntheticModelOptions options;
    options.shape = *s;
    options.weight_type = GgmlType::kQ8_0;
    std::unique_ptr<OwnedFile> owned = BuildAndParse(options);
    ASSERT_NE(owned, nullptr);
    absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(*owned->file);
    ASSERT_TRUE(config.ok()) << config.status();
    const ModelConfig want = ToModelConfig(*s);
    EXPECT_EQ(config->architecture, want.architecture) << s->name;
    EXPECT_EQ(config->rope_layout, want.rope_layout) << s->name;
    EXPECT_EQ(config->qkv_bias, want.qkv_bias) << s->name;
    EXPECT_EQ(config->tied_embeddings, true) << s->name;
    EXPECT_EQ(config->has_rope_freq_factors, want.has_rope_freq_factors) << s->name;
    EXPECT_FLOAT_EQ(config->rms_norm_eps, want.rms_norm_eps) << s->name;
    EXPECT_FLOAT_EQ(config->rope_theta, want.rope_theta) << s->name;
    absl::StatusOr<ModelWeights> weights = BindWeights(*owned->file, *config);
    ASSERT_TRUE(weights.ok()) << weights.status();
    if (s->llama3_rope.enabled) {
      ASSERT_NE(weights->rope_freqs, nullptr);
      const std::vector<float> factors = cpu_ref::DequantizeTensor(*weights->rope_freqs);
      EXPECT_EQ(factors, Llama3RopeFreqFactors(*s));
    }
  }
}

TEST(SyntheticModelTest, RejectsBadOptions) {
  SyntheticModelOptions options = Options("tiny", GgmlType::kQ4_1);
  EXPECT_THAT(PlanSyntheticModel(options).status().message(), HasSubstr("not supported"));

  options = Options("tiny", GgmlType::kQ8_0);
  options.shape.ffn_dim = 100;  // Not a multiple of 32.
  EXPECT_THAT(PlanSyntheticModel(options).status().message(), HasSubstr("block size 32"));

  options = Options("tiny", GgmlType::kF16);
  options.shape.num_kv_heads = 3;
  EXPECT_THAT(PlanSyntheticModel(options).status().message(), HasSubstr("num_kv_heads"));

  options = Options("tiny", GgmlType::kF16);
  options.shape.vocab_size = 100;
  EXPECT_THAT(PlanSyntheticModel(options).status().message(), HasSubstr("built-in vocab"));

  options = Options("tiny", GgmlType::kF16);
  options.vocab_path = "/nonexistent/vocab.gguf";
  EXPECT_FALSE(PlanSyntheticModel(options).ok());
}

// ---- Vocabulary -------------------------------------------------------------------------------

TEST(SyntheticModelTest, BuiltinVocabLoadsWithTheTokenizer) {
  std::unique_ptr<OwnedFile> owned = BuildAndParse(Options("tiny", GgmlType::kF16));
  ASSERT_NE(owned, nullptr);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(*owned->file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 260);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_EQ((*tok)->unk_id(), 0);
  EXPECT_TRUE((*tok)->add_bos());
  EXPECT_FALSE((*tok)->add_eos());
  EXPECT_FALSE((*tok)->add_space_prefix());
  EXPECT_EQ((*tok)->TokenText(3 + 'A'), "<0x41>");
  // Every byte is its own token: id = byte + 3, after BOS.
  const std::vector<int32_t> ids = (*tok)->Encode("Hi\xC3\xA9!", /*add_special=*/true);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 3 + 'H', 3 + 'i', 3 + 0xC3, 3 + 0xA9, 3 + '!'}));
  EXPECT_EQ((*tok)->Decode(ids), "Hi\xC3\xA9!");
  // SPM escapes a space as U+2581, which the vocab holds as token 259, so spaces round-trip.
  const std::vector<int32_t> spaced = (*tok)->Encode("a b", /*add_special=*/false);
  EXPECT_EQ(spaced, (std::vector<int32_t>{3 + 'a', 259, 3 + 'b'}));
  EXPECT_EQ((*tok)->Decode(spaced), "a b");
}

TEST(SyntheticModelTest, BuiltinVocabPadsWithUnusedTokens) {
  const auto md = BuiltinVocabMetadata(300);
  const GgufValue* tokens = nullptr;
  const GgufValue* types = nullptr;
  for (const auto& [key, value] : md) {
    if (key == "tokenizer.ggml.tokens") tokens = &value;
    if (key == "tokenizer.ggml.token_type") types = &value;
  }
  ASSERT_NE(tokens, nullptr);
  ASSERT_NE(types, nullptr);
  const GgufArray* t = *tokens->AsArray();
  ASSERT_EQ(t->items.size(), 300u);
  EXPECT_EQ(*t->items[258].AsString(), "<0xFF>");
  EXPECT_EQ(*t->items[259].AsString(), "\u2581");
  EXPECT_EQ(*(*types->AsArray())->items[259].AsInt(), 1);
  EXPECT_EQ(*t->items[260].AsString(), "<unused_0>");
  EXPECT_EQ(*t->items[299].AsString(), "<unused_39>");
  EXPECT_EQ(*(*types->AsArray())->items[299].AsInt(), 5);
  EXPECT_EQ(*(*types->AsArray())->items[0].AsInt(), 2);
  EXPECT_EQ(*(*types->AsArray())->items[1].AsInt(), 3);
  EXPECT_EQ(*(*types->AsArray())->items[100].AsInt(), 6);
}

TEST(SyntheticModelTest, CopiesVocabFromAVocabGguf) {
  const std::string vocab_path = SharedPath("tokenizer/ggml-vocab-llama-spm.gguf");
  if (!std::filesystem::exists(vocab_path)) GTEST_SKIP() << vocab_path << " is absent";
  absl::StatusOr<std::unique_ptr<GgufFile>> vocab_file = GgufFile::Open(vocab_path);
  ASSERT_TRUE(vocab_file.ok()) << vocab_file.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> reference = Tokenizer::FromGguf(**vocab_file);
  ASSERT_TRUE(reference.ok()) << reference.status();

  SyntheticModelOptions options = Options("tiny", GgmlType::kQ4_0);
  options.vocab_path = vocab_path;
  std::unique_ptr<OwnedFile> owned = BuildAndParse(options);
  ASSERT_NE(owned, nullptr);
  const GgufFile& file = *owned->file;
  const int64_t vocab = (*reference)->vocab_size();
  EXPECT_EQ(*file.GetInt("llama.vocab_size"), vocab);
  EXPECT_EQ(file.FindTensor("token_embd.weight")->shape, (std::vector<int64_t>{64, vocab}));
  EXPECT_EQ(file.FindTensor("output.weight")->shape, (std::vector<int64_t>{64, vocab}));
  for (const auto& [key, value] : (*vocab_file)->metadata()) {
    if (key.rfind("tokenizer.", 0) != 0) continue;
    ASSERT_NE(file.Find(key), nullptr) << key;
    EXPECT_EQ(file.Find(key)->DebugString(), value.DebugString()) << key;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const char* text : {"Hello world", " multiple   spaces\n", "caf\xC3\xA9 \xE2\x82\xAC"}) {
    EXPECT_EQ((*tok)->Encode(text, true), (*reference)->Encode(text, true)) << text;
  }
  absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(file);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->vocab_size, vocab);
}

// ---- Activations --------------------------------------------------------------------------------

double Rms(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s / static_cast<double>(n));
}

// Runs the forward of cpu_forward.h's header comment token by token with the cpu_ref ops,
// recording the residual stream's RMS after every attention and FFN block. Returns the last
// token's logits.
std::vector<float> TraceResidualRms(const GgufFile& file, const ModelConfig& c,
                                    const std::vector<int32_t>& tokens,
                                    std::vector<double>* rms_trace) {
  const ModelWeights w = *BindWeights(file, c);
  const std::vector<float> rope_freqs =
      w.rope_freqs ? cpu_ref::DequantizeTensor(*w.rope_freqs) : std::vector<float>{};
  const int64_t h = c.hidden_dim, n = static_cast<int64_t>(tokens.size());
  std::vector<std::vector<float>> keys(c.num_layers), values(c.num_layers);
  std::vector<float> x(h), hn(h), q(c.q_dim()), k(c.kv_dim()), v(c.kv_dim()), attn(c.q_dim()), o(h),
      g(c.ffn_dim), u(c.ffn_dim), logits(c.vocab_size);
  const auto add_bias = [](const GgufTensorInfo* b, std::vector<float>& y) {
    if (b == nullptr) return;
    const std::vector<float> bias = cpu_ref::DequantizeTensor(*b);
    for (size_t i = 0; i < y.size(); ++i) y[i] += bias[i];
  };
  for (int64_t pos = 0; pos < n; ++pos) {
    const int64_t row_bytes = GgmlRowBytes(w.token_embd->type, h);
    DequantizeRow(w.token_embd->type, w.token_embd->data + tokens[pos] * row_bytes, x.data(), h);
    if (pos == n - 1) rms_trace->push_back(Rms(x.data(), h));
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const LayerWeights& lw = w.layers[l];
      cpu_ref::RmsNorm(x.data(), cpu_ref::DequantizeTensor(*lw.attn_norm).data(), h, c.rms_norm_eps,
                       hn.data());
      cpu_ref::MatVec(*lw.attn_q, hn.data(), q.data());
      cpu_ref::MatVec(*lw.attn_k, hn.data(), k.data());
      cpu_ref::MatVec(*lw.attn_v, hn.data(), v.data());
      add_bias(lw.attn_q_bias, q);
      add_bias(lw.attn_k_bias, k);
      add_bias(lw.attn_v_bias, v);
      cpu_ref::ApplyRope(c, rope_freqs, pos, c.num_heads, q.data());
      cpu_ref::ApplyRope(c, rope_freqs, pos, c.num_kv_heads, k.data());
      keys[l].insert(keys[l].end(), k.begin(), k.end());
      values[l].insert(values[l].end(), v.begin(), v.end());
      cpu_ref::Attention(q.data(), keys[l].data(), values[l].data(), pos + 1, c.num_heads,
                         c.num_kv_heads, c.head_dim, attn.data());
      cpu_ref::MatVec(*lw.attn_output, attn.data(), o.data());
      for (int64_t i = 0; i < h; ++i) x[i] += o[i];
      if (pos == n - 1) rms_trace->push_back(Rms(x.data(), h));
      cpu_ref::RmsNorm(x.data(), cpu_ref::DequantizeTensor(*lw.ffn_norm).data(), h, c.rms_norm_eps,
                       hn.data());
      cpu_ref::MatVec(*lw.ffn_gate, hn.data(), g.data());
      cpu_ref::MatVec(*lw.ffn_up, hn.data(), u.data());
      for (int64_t i = 0; i < c.ffn_dim; ++i) g[i] = cpu_ref::Silu(g[i]) * u[i];
      cpu_ref::MatVec(*lw.ffn_down, g.data(), o.data());
      for (int64_t i = 0; i < h; ++i) x[i] += o[i];
      if (pos == n - 1) rms_trace->push_back(Rms(x.data(), h));
    }
  }
  cpu_ref::RmsNorm(x.data(), cpu_ref::DequantizeTensor(*w.output_norm).data(), h, c.rms_norm_eps,
                   hn.data());
  cpu_ref::MatVec(*w.output, hn.data(), logits.data());
  return logits;
}

struct LogitStats {
  double std = 0;
  double max_prob = 0;
  double entropy = 0;  // nats
};

LogitStats Stats(const std::vector<float>& logits) {
  double mean = 0, max = -1e30;
  for (float l : logits) {
    mean += l;
    max = std::max<double>(max, l);
  }
  mean /= static_cast<double>(logits.size());
  double var = 0, z = 0;
  for (float l : logits) {
    var += (l - mean) * (l - mean);
    z += std::exp(l - max);
  }
  LogitStats s;
  s.std = std::sqrt(var / static_cast<double>(logits.size()));
  s.max_prob = 1.0 / z;
  for (float l : logits) {
    const double p = std::exp(l - max) / z;
    if (p > 0) s.entropy -= p * std::log(p);
  }
  return s;
}

// Checks the residual stream stays O(1) through every block and the logits are spread like a
// real model's (neither flat nor one-hot), and that the trace agrees with CpuModel.
void ExpectRealisticActivations(const SyntheticModelOptions& options, size_t num_tokens = 8) {
  SCOPED_TRACE(options.shape.name + " " + std::string(GgmlTypeName(options.weight_type)));
  std::unique_ptr<OwnedFile> owned = BuildAndParse(options);
  ASSERT_NE(owned, nullptr);
  absl::StatusOr<std::unique_ptr<CpuModel>> model = CpuModel::Load(owned->file);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  std::vector<int32_t> tokens = {1, 75, 108, 111, 3 + ' ', 200, 42, 7};
  tokens.resize(num_tokens);

  std::vector<double> rms;
  const std::vector<float> traced = TraceResidualRms(*owned->file, c, tokens, &rms);
  ASSERT_EQ(static_cast<int64_t>(rms.size()), 1 + 2 * c.num_layers);
  // The stream starts at the embedding's RMS (1, or 1/sqrt(hidden) when tied), never
  // explodes or vanishes, and ends O(1).
  for (size_t i = 0; i < rms.size(); ++i) {
    EXPECT_GT(rms[i], 0.01) << "residual RMS after block " << i;
    EXPECT_LT(rms[i], 2.5) << "residual RMS after block " << i;
    if (i > 0) {
      EXPECT_GT(rms[i], 0.8 * rms[i - 1]) << "residual RMS after block " << i;
    }
  }
  EXPECT_GT(rms.back(), 0.5);

  CpuKvCache cache(c, static_cast<int64_t>(tokens.size()));
  absl::StatusOr<std::vector<float>> logits = (*model)->Forward(tokens, &cache, true);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const int64_t vocab = c.vocab_size;
  ASSERT_EQ(static_cast<int64_t>(logits->size()), vocab * static_cast<int64_t>(tokens.size()));
  const std::vector<float> last(logits->end() - vocab, logits->end());
  for (int64_t i = 0; i < vocab; ++i)
    ASSERT_NEAR(last[i], traced[i], 1e-3 + 1e-3 * std::abs(traced[i]));

  for (size_t p = 0; p < tokens.size(); ++p) {
    const std::vector<float> row(logits->begin() + p * vocab, logits->begin() + (p + 1) * vocab);
    const LogitStats s = Stats(row);
    EXPECT_GT(s.std, 0.8) << "position " << p;
    EXPECT_LT(s.std, 5.0) << "position " << p;
    EXPECT_LT(s.max_prob, 0.9) << "position " << p;
    EXPECT_GT(s.entropy, 1.0) << "position " << p;
  }
  // Positions see different contexts, so their logits differ.
  EXPECT_NE(std::vector<float>(logits->begin(), logits->begin() + vocab), last);
}

TEST(SyntheticModelTest, TinyActivationsStayRealistic) {
  for (GgmlType type : kWeightTypes) ExpectRealisticActivations(Options("tiny", type));
}

TEST(SyntheticModelTest, QwenAndLlama3VariantsActivationsStayRealistic) {
  ModelShape qwen = *FindShape("qwen2.5-0.5b");
  ModelShape llama3 = *FindShape("llama-3.2-1b");
  for (ModelShape* s : {&qwen, &llama3}) {
    s->vocab_size = 512;
    s->hidden_dim = 256;
    s->num_heads = 4;
    s->head_dim = 64;
    s->num_kv_heads = s == &qwen ? 1 : 2;
    s->ffn_dim = 512;
    s->num_layers = 4;
    SyntheticModelOptions options;
    options.shape = *s;
    options.weight_type = GgmlType::kQ8_0;
    ExpectRealisticActivations(options);
  }
}

// The depth and widths of SmolLM2-135M (30 layers, 576 hidden, 1536 ffn), with the small
// built-in vocab to keep the test quick: activations must not grow or vanish with depth.
TEST(SyntheticModelTest, DeepModelActivationsStayRealistic) {
  SyntheticModelOptions options = Options("smollm2-135m", GgmlType::kQ4_0, 11);
  options.shape.vocab_size = kBuiltinVocabSize;
  ExpectRealisticActivations(options, /*num_tokens=*/4);
}

}  // namespace
}  // namespace duet
