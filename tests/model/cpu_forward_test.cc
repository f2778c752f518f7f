#include "common/model/cpu_forward.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/model/gguf.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/tiny_model.h"

namespace duet {
namespace {

using ::testing::HasSubstr;
using tiny::TinyModelSpec;
using tiny::TinyTensor;

std::unique_ptr<CpuModel> LoadOrDie(const TinyModelSpec& spec,
                                    const std::vector<TinyTensor>& tensors,
                                    GgmlType matrix_type = GgmlType::kF32,
                                    GgmlType vector_type = GgmlType::kF32) {
  absl::StatusOr<std::shared_ptr<const GgufFile>> file =
      tiny::BuildTinyFile(spec, tensors, matrix_type, vector_type);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<CpuModel>> model = CpuModel::Load(*file);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

std::vector<int32_t> TestTokens(int64_t n, int64_t vocab) {
  std::vector<int32_t> tokens;
  for (int64_t i = 0; i < n; ++i) tokens.push_back(static_cast<int32_t>((7 * i + 3) % vocab));
  return tokens;
}

// All logits of `tokens` run as one prefill from an empty cache.
std::vector<float> Prefill(const CpuModel& model, const std::vector<int32_t>& tokens) {
  CpuKvCache cache(model.config(), static_cast<int64_t>(tokens.size()));
  absl::StatusOr<std::vector<float>> logits = model.Forward(tokens, &cache, /*all_logits=*/true);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : std::vector<float>();
}

// max |a - b| / max |b|, the error relative to the logits' scale.
double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double max_diff = 0.0;
  double max_ref = 1e-30;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[i])));
  }
  return max_diff / max_ref;
}

// ---------------------------------------------------------------------------------------------
// Reference ops on hand-checkable inputs.

TEST(CpuRefTest, RmsNorm) {
  const float x[4] = {1, 2, 3, 4};
  const float w[4] = {1, 1, 2, 0.5f};
  float out[4];
  cpu_ref::RmsNorm(x, w, 4, 0.0f, out);
  const double rms = std::sqrt(7.5);  // mean(1 + 4 + 9 + 16)
  EXPECT_NEAR(out[0], 1 / rms, 1e-6);
  EXPECT_NEAR(out[1], 2 / rms, 1e-6);
  EXPECT_NEAR(out[2], 6 / rms, 1e-6);
  EXPECT_NEAR(out[3], 2 / rms, 1e-6);
  cpu_ref::RmsNorm(x, w, 4, 2.5f, out);
  EXPECT_NEAR(out[0], 1 / std::sqrt(10.0), 1e-6);
}

ModelConfig RopeConfig(RopeLayout layout) {
  ModelConfig c;
  c.head_dim = 4;
  c.rope_dim = 4;
  c.rope_theta = 10000.0f;
  c.rope_layout = layout;
  return c;
}

TEST(CpuRefTest, RopeNormalRotatesAdjacentPairs) {
  // Pair 0 turns by pos * 1, pair 1 by pos * 10000^(-1/2) = pos / 100.
  float x[8] = {1, 0, 1, 0, /*head 1*/ 0, 2, 0, 2};
  cpu_ref::ApplyRope(RopeConfig(RopeLayout::kNormal), {}, 3, 2, x);
  EXPECT_NEAR(x[0], std::cos(3.0), 1e-6);
  EXPECT_NEAR(x[1], std::sin(3.0), 1e-6);
  EXPECT_NEAR(x[2], std::cos(0.03), 1e-6);
  EXPECT_NEAR(x[3], std::sin(0.03), 1e-6);
  EXPECT_NEAR(x[4], -2 * std::sin(3.0), 1e-6);
  EXPECT_NEAR(x[5], 2 * std::cos(3.0), 1e-6);
}

TEST(CpuRefTest, RopeNeoxRotatesHalves) {
  float x[4] = {1, 1, 0, 0};  // Pairs (0, 2) and (1, 3).
  cpu_ref::ApplyRope(RopeConfig(RopeLayout::kNeox), {}, 2, 1, x);
  EXPECT_NEAR(x[0], std::cos(2.0), 1e-6);
  EXPECT_NEAR(x[2], std::sin(2.0), 1e-6);
  EXPECT_NEAR(x[1], std::cos(0.02), 1e-6);
  EXPECT_NEAR(x[3], std::sin(0.02), 1e-6);
}

TEST(CpuRefTest, RopeScalingFreqFactorsAndPartialRotation) {
  ModelConfig c = RopeConfig(RopeLayout::kNormal);
  c.rope_scaling = RopeScalingType::kLinear;
  c.rope_scaling_factor = 4.0f;
  c.head_dim = 6;  // Dimensions 4 and 5 pass through.
  float x[6] = {1, 0, 1, 0, 7, 8};
  const float factors[2] = {2.0f, 0.5f};
  cpu_ref::ApplyRope(c, factors, 8, 1, x);  // Position 8 / 4 = 2.
  EXPECT_NEAR(x[0], std::cos(2.0 / 2.0), 1e-6);
  EXPECT_NEAR(x[1], std::sin(2.0 / 2.0), 1e-6);
  EXPECT_NEAR(x[2], std::cos(0.02 / 0.5), 1e-6);
  EXPECT_NEAR(x[3], std::sin(0.02 / 0.5), 1e-6);
  EXPECT_EQ(x[4], 7.0f);
  EXPECT_EQ(x[5], 8.0f);
}

TEST(CpuRefTest, AttentionSoftmaxAndGroups) {
  // 2 query heads sharing 1 KV head (head_dim 2), 2 positions.
  const float q[4] = {1, 0, 0, 0};
  const float keys[4] = {std::sqrt(2.0f), 0, 0, 0};  // scores for head 0: 1, 0
  const float values[4] = {1, 2, 3, 4};
  float out[4];
  cpu_ref::Attention(q, keys, values, 2, 2, 1, 2, out);
  const double p0 = std::exp(1.0) / (std::exp(1.0) + 1.0);
  EXPECT_NEAR(out[0], p0 * 1 + (1 - p0) * 3, 1e-6);
  EXPECT_NEAR(out[1], p0 * 2 + (1 - p0) * 4, 1e-6);
  EXPECT_NEAR(out[2], 2.0, 1e-6);  // Head 1: uniform weights.
  EXPECT_NEAR(out[3], 3.0, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Whole-model forward against a naive double-precision implementation written from the
// formulas, independently of cpu_forward.cc.

class NaiveModel {
 public:
  NaiveModel(const TinyModelSpec& spec, const std::vector<TinyTensor>& tensors)
      : s_(spec), tensors_(tensors) {}

  // Logits [tokens.size() * vocab].
  std::vector<float> Forward(const std::vector<int32_t>& tokens) {
    std::vector<float> logits;
    std::vector<std::vector<std::vector<double>>> keys(s_.num_layers), values(s_.num_layers);
    for (size_t pos = 0; pos < tokens.size(); ++pos) {
      const std::vector<float>& embd = Get("token_embd.weight");
      std::vector<double> x(embd.begin() + tokens[pos] * s_.hidden_dim,
                            embd.begin() + (tokens[pos] + 1) * s_.hidden_dim);
      for (int64_t l = 0; l < s_.num_layers; ++l) {
        const std::string p = absl::StrCat("blk.", l, ".");
        std::vector<double> h = Norm(x, Get(p + "attn_norm.weight"));
        std::vector<double> q = Linear(p + "attn_q", h);
        std::vector<double> k = Linear(p + "attn_k", h);
        keys[l].push_back(Rope(k, s_.num_kv_heads, static_cast<double>(pos)));
        values[l].push_back(Linear(p + "attn_v", h));
        q = Rope(q, s_.num_heads, static_cast<double>(pos));
        std::vector<double> attn(s_.q_dim());
        const int64_t group = s_.num_heads / s_.num_kv_heads;
        for (int64_t head = 0; head < s_.num_heads; ++head) {
          const int64_t kvh = head / group;
          std::vector<double> w;
          for (const std::vector<double>& key : keys[l]) {
            double dot = 0;
            for (int64_t d = 0; d < s_.head_dim; ++d) {
              dot += q[head * s_.head_dim + d] * key[kvh * s_.head_dim + d];
            }
            w.push_back(std::exp(dot / std::sqrt(static_cast<double>(s_.head_dim))));
          }
          double total = 0;
          for (double e : w) total += e;
          for (size_t j = 0; j < w.size(); ++j) {
            for (int64_t d = 0; d < s_.head_dim; ++d) {
              attn[head * s_.head_dim + d] += w[j] / total * values[l][j][kvh * s_.head_dim + d];
            }
          }
        }
        Add(&x, Linear(p + "attn_output", attn));
        h = Norm(x, Get(p + "ffn_norm.weight"));
        std::vector<double> gate = Linear(p + "ffn_gate", h);
        std::vector<double> up = Linear(p + "ffn_up", h);
        for (size_t i = 0; i < gate.size(); ++i) {
          gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
        }
        Add(&x, Linear(p + "ffn_down", gate));
      }
      std::vector<double> out =
          Linear(s_.tied_embeddings ? "token_embd" : "output", Norm(x, Get("output_norm.weight")));
      logits.insert(logits.end(), out.begin(), out.end());
    }
    return logits;
  }

 private:
  const std::vector<float>& Get(const std::string& name) {
    for (const TinyTensor& t : tensors_) {
      if (t.name == name) return t.values;
    }
    ADD_FAILURE() << "no tensor " << name;
    static const std::vector<float> kEmpty;
    return kEmpty;
  }

  // y = W x (+ b): W has `out` rows of x.size() elements.
  std::vector<double> Linear(const std::string& prefix, const std::vector<double>& x) {
    const std::vector<float>& w = Get(prefix + ".weight");
    std::vector<double> y(w.size() / x.size());
    for (size_t r = 0; r < y.size(); ++r) {
      for (size_t c = 0; c < x.size(); ++c) y[r] += w[r * x.size() + c] * x[c];
    }
    const bool biased = prefix.find("attn_q") != std::string::npos ||
                        prefix.find("attn_k") != std::string::npos ||
                        prefix.find("attn_v") != std::string::npos;
    if (s_.has_bias() && biased) {
      const std::vector<float>& b = Get(prefix + ".bias");
      for (size_t r = 0; r < y.size(); ++r) y[r] += b[r];
    }
    return y;
  }

  std::vector<double> Norm(const std::vector<double>& x, const std::vector<float>& w) {
    double ms = 0;
    for (double v : x) ms += v * v / static_cast<double>(x.size());
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] / std::sqrt(ms + s_.rms_norm_eps) * w[i];
    return y;
  }

  // Each rotated pair as a complex number multiplied by e^(i * angle).
  std::vector<double> Rope(std::vector<double> x, int64_t heads, double pos) {
    const int64_t rd = s_.rotated_dims();
    const double scaled = s_.rope_linear_factor != 0 ? pos / s_.rope_linear_factor : pos;
    for (int64_t head = 0; head < heads; ++head) {
      double* v = x.data() + head * s_.head_dim;
      for (int64_t i = 0; i < rd / 2; ++i) {
        double freq = std::pow(static_cast<double>(s_.rope_theta), -2.0 * i / rd);
        if (s_.rope_freq_factors) freq /= Get("rope_freqs.weight")[i];
        const bool neox = s_.architecture == "qwen2";
        const int64_t a = neox ? i : 2 * i;
        const int64_t b = neox ? i + rd / 2 : 2 * i + 1;
        const std::complex<double> z =
            std::complex<double>(v[a], v[b]) * std::polar(1.0, scaled * freq);
        v[a] = z.real();
        v[b] = z.imag();
      }
    }
    return x;
  }

  static void Add(std::vector<double>* x, const std::vector<double>& y) {
    for (size_t i = 0; i < y.size(); ++i) (*x)[i] += y[i];
  }

  TinyModelSpec s_;
  const std::vector<TinyTensor>& tensors_;
};

TinyModelSpec SmallSpec(const std::string& architecture) {
  TinyModelSpec spec;
  spec.architecture = architecture;
  spec.vocab_size = 20;
  spec.hidden_dim = 32;
  spec.num_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 8;
  spec.ffn_dim = 48;
  return spec;
}

void ExpectMatchesNaive(const TinyModelSpec& spec) {
  const std::vector<TinyTensor> tensors = tiny::RandomTinyTensors(spec);
  std::unique_ptr<CpuModel> model = LoadOrDie(spec, tensors);
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> tokens = TestTokens(6, spec.vocab_size);
  const std::vector<float> expected = NaiveModel(spec, tensors).Forward(tokens);
  EXPECT_LT(RelativeError(Prefill(*model, tokens), expected), 1e-5);
}

TEST(CpuForwardTest, LlamaMatchesNaiveForward) { ExpectMatchesNaive(SmallSpec("llama")); }

TEST(CpuForwardTest, LlamaWithScalingFreqFactorsPartialRopeAndBiasMatchesNaive) {
  TinyModelSpec spec = SmallSpec("llama");
  spec.rope_linear_factor = 2.0f;
  spec.rope_freq_factors = true;
  spec.rope_dim = 4;
  spec.qkv_bias = true;
  spec.num_kv_heads = 1;
  ExpectMatchesNaive(spec);
}

TEST(CpuForwardTest, Qwen2MatchesNaiveForward) {
  TinyModelSpec spec = SmallSpec("qwen2");
  spec.tied_embeddings = true;
  spec.rope_theta = 1000000.0f;
  ExpectMatchesNaive(spec);
}

// ---------------------------------------------------------------------------------------------
// KV cache: prefill == token by token == chunks, and truncation.

TEST(CpuForwardTest, PrefillEqualsTokenByTokenAndChunks) {
  for (const char* arch : {"llama", "qwen2"}) {
    TinyModelSpec spec;
    spec.architecture = arch;
    std::unique_ptr<CpuModel> model = LoadOrDie(spec, tiny::RandomTinyTensors(spec));
    ASSERT_NE(model, nullptr);
    const std::vector<int32_t> tokens = TestTokens(12, spec.vocab_size);
    const std::vector<float> prefill = Prefill(*model, tokens);

    CpuKvCache cache(model->config(), 12);
    std::vector<float> stepped;
    for (int32_t token : tokens) {
      absl::StatusOr<std::vector<float>> logits = model->Forward({token}, &cache);
      ASSERT_TRUE(logits.ok()) << logits.status();
      stepped.insert(stepped.end(), logits->begin(), logits->end());
    }
    EXPECT_EQ(cache.num_tokens(), 12);
    EXPECT_EQ(stepped, prefill) << arch;  // Bit-exact: same ops in the same order.

    CpuKvCache chunked_cache(model->config(), 12);
    std::vector<float> chunked;
    for (auto [begin, end] : {std::pair{0, 5}, std::pair{5, 6}, std::pair{6, 12}}) {
      absl::StatusOr<std::vector<float>> logits = model->Forward(
          absl::MakeConstSpan(tokens).subspan(begin, end - begin), &chunked_cache, true);
      ASSERT_TRUE(logits.ok()) << logits.status();
      chunked.insert(chunked.end(), logits->begin(), logits->end());
    }
    EXPECT_EQ(chunked, prefill) << arch;
  }
}

TEST(CpuForwardTest, LastLogitsOnlyAndTruncate) {
  TinyModelSpec spec;
  std::unique_ptr<CpuModel> model = LoadOrDie(spec, tiny::RandomTinyTensors(spec));
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> tokens = TestTokens(8, spec.vocab_size);
  const std::vector<float> all = Prefill(*model, tokens);

  CpuKvCache cache(model->config(), 16);
  absl::StatusOr<std::vector<float>> last = model->Forward(tokens, &cache);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(*last, std::vector<float>(all.end() - spec.vocab_size, all.end()));

  // Drop the last 3 tokens and replace them: equals running the edited sequence from scratch.
  cache.Truncate(5);
  EXPECT_EQ(cache.num_tokens(), 5);
  std::vector<int32_t> edited = tokens;
  edited.resize(5);
  edited.insert(edited.end(), {1, 2, 3});
  absl::StatusOr<std::vector<float>> tail =
      model->Forward(absl::MakeConstSpan(edited).subspan(5), &cache, true);
  ASSERT_TRUE(tail.ok()) << tail.status();
  const std::vector<float> fresh = Prefill(*model, edited);
  EXPECT_EQ(*tail, std::vector<float>(fresh.end() - 3 * spec.vocab_size, fresh.end()));
}

// ---------------------------------------------------------------------------------------------
// Weight dtypes: a quantized model equals the f32 model holding its dequantized values.

TEST(CpuForwardTest, EachWeightTypeEqualsF32OfDequantizedValues) {
  for (GgmlType type : {GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_0}) {
    SCOPED_TRACE(std::string(GgmlTypeName(type)));
    TinyModelSpec spec;
    spec.qkv_bias = true;
    const std::vector<TinyTensor> tensors = tiny::RandomTinyTensors(spec);
    const bool plain = type == GgmlType::kF16 || type == GgmlType::kBF16;
    const GgmlType vector_type = plain ? type : GgmlType::kF32;
    std::vector<TinyTensor> baked = tensors;
    for (TinyTensor& t : baked) t.values = tiny::RoundTrip(t.matrix ? type : vector_type, t);

    std::unique_ptr<CpuModel> quantized = LoadOrDie(spec, tensors, type, vector_type);
    std::unique_ptr<CpuModel> reference = LoadOrDie(spec, baked);
    ASSERT_NE(quantized, nullptr);
    ASSERT_NE(reference, nullptr);
    const std::vector<int32_t> tokens = TestTokens(10, spec.vocab_size);
    const std::vector<float> expected = Prefill(*reference, tokens);
    EXPECT_LT(RelativeError(Prefill(*quantized, tokens), expected), 1e-5);
    // The types do change the weights: the unrounded model differs.
    EXPECT_GT(RelativeError(Prefill(*LoadOrDie(spec, tensors), tokens), expected), 1e-6);
  }
}

// ---------------------------------------------------------------------------------------------
// GQA: num_kv_heads < num_heads equals the model with each K/V head replicated per query head.

TEST(CpuForwardTest, GroupedQueryAttentionEqualsReplicatedHeads) {
  TinyModelSpec spec;
  spec.num_heads = 4;
  spec.num_kv_heads = 2;
  spec.qkv_bias = true;
  const std::vector<TinyTensor> tensors = tiny::RandomTinyTensors(spec);

  TinyModelSpec full = spec;
  full.num_kv_heads = spec.num_heads;
  const int64_t group = spec.num_heads / spec.num_kv_heads;
  std::vector<TinyTensor> replicated = tensors;
  for (TinyTensor& t : replicated) {
    const bool is_kv =
        t.name.find("attn_k.") != std::string::npos || t.name.find("attn_v.") != std::string::npos;
    if (!is_kv) continue;
    // Rows (output features) are [kv_head][head_dim]; each row has shape[0] elements
    // (hidden for weights, 1 for biases).
    const int64_t row = t.matrix ? t.shape[0] : 1;
    const int64_t head_block = spec.head_dim * row;
    std::vector<float> values;
    for (int64_t h = 0; h < full.num_kv_heads; ++h) {
      const auto src = t.values.begin() + (h / group) * head_block;
      values.insert(values.end(), src, src + head_block);
    }
    t.values = values;
    if (t.matrix) {
      t.shape[1] = full.kv_dim();
    } else {
      t.shape[0] = full.kv_dim();
    }
  }
  std::unique_ptr<CpuModel> gqa = LoadOrDie(spec, tensors);
  std::unique_ptr<CpuModel> mha = LoadOrDie(full, replicated);
  ASSERT_NE(gqa, nullptr);
  ASSERT_NE(mha, nullptr);
  const std::vector<int32_t> tokens = TestTokens(9, spec.vocab_size);
  EXPECT_EQ(Prefill(*gqa, tokens), Prefill(*mha, tokens));
}

// ---------------------------------------------------------------------------------------------
// Errors leave the cache untouched.

TEST(CpuForwardTest, ErrorsAppendNothing) {
  TinyModelSpec spec;
  spec.context_length = 10;
  std::unique_ptr<CpuModel> model = LoadOrDie(spec, tiny::RandomTinyTensors(spec));
  ASSERT_NE(model, nullptr);
  CpuKvCache cache(model->config(), 8);
  ASSERT_TRUE(model->Forward({1, 2, 3}, &cache).ok());

  auto expect_invalid = [&](absl::StatusOr<std::vector<float>> result, const std::string& what) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << what;
    EXPECT_THAT(result.status().message(), HasSubstr(what));
    EXPECT_EQ(cache.num_tokens(), 3);
  };
  expect_invalid(model->Forward({}, &cache), "no tokens");
  expect_invalid(model->Forward({4, -1}, &cache), "token 1 has id -1, outside [0, 40)");
  expect_invalid(model->Forward({40}, &cache), "token 0 has id 40, outside [0, 40)");
  expect_invalid(model->Forward({1, 2, 3, 4, 5, 6}, &cache), "KV cache capacity of 8");

  CpuKvCache big_cache(model->config(), 20);
  ASSERT_TRUE(model->Forward({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, &big_cache).ok());
  absl::StatusOr<std::vector<float>> past_context = model->Forward({1}, &big_cache);
  EXPECT_EQ(past_context.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(past_context.status().message(), HasSubstr("context length of 10"));
  EXPECT_EQ(big_cache.num_tokens(), 10);

  ModelConfig wrong_shape = model->config();
  wrong_shape.num_layers = 3;
  CpuKvCache wrong_cache(wrong_shape, 8);
  EXPECT_EQ(model->Forward({1}, &wrong_cache).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Forward({1}, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace duet
