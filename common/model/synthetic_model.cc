#include "common/model/synthetic_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string_view>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "common/base/status.h"
#include "common/model/quant.h"

namespace duet {
namespace {

// ---- Random numbers -------------------------------------------------------------------------

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

// A stream of approximately N(0, 1) samples: the sum of four 16-bit uniforms (Irwin-Hall,
// n = 4), centred and scaled to unit variance. Integer arithmetic up to one exact int->float
// conversion and one multiply, so the values are bit-identical on every platform.
class NormalStream {
 public:
  NormalStream(uint64_t tensor_seed, int64_t row) : state_(tensor_seed) {
    state_ ^= static_cast<uint64_t>(row) * 0xD6E8FEB86659FD93ull;
    SplitMix64(state_);
  }

  float Next() {
    const uint64_t r = SplitMix64(state_);
    // Each term is (x + 0.5) / 65536 with x in [0, 65535]; four have mean 2, variance 1/3.
    const int32_t sum = static_cast<int32_t>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) +
                                             ((r >> 32) & 0xFFFF) + (r >> 48)) -
                        131070;
    constexpr float kScale = 1.7320508075688772f / 65536.0f;  // sqrt(3) / 65536
    return static_cast<float>(sum) * kScale;
  }

 private:
  uint64_t state_;
};

// ---- Initialization -------------------------------------------------------------------------

constexpr float kNormJitter = 0.05f;
constexpr float kBiasStd = 0.2f;
constexpr float kTargetLogitStd = 2.0f;

// How one row of a tensor is drawn: value = mean + std * N, or the rope factors.
struct RowInit {
  float mean = 0.0f;
  float std = 1.0f;
};

// Untied: N(0, 1), so the residual stream starts at RMS 1. Tied: the logit of the token whose
// embedding sits in the residual stream is ~ std * sqrt(H) / rms(stream) standard deviations
// above the rest, so a unit embedding would make every model repeat its input with certainty;
// 1/sqrt(H) puts it about one logit std above, as in trained models.
float EmbeddingStd(const ModelShape& shape) {
  return shape.tied_embeddings ? 1.0f / std::sqrt(static_cast<float>(shape.hidden_dim)) : 1.0f;
}

RowInit InitFor(const TensorSpec& spec, const ModelShape& shape) {
  const float fan_in = static_cast<float>(spec.shape[0]);
  const float hidden = static_cast<float>(shape.hidden_dim);
  switch (spec.role) {
    case TensorRole::kEmbedding:
      return {0.0f, EmbeddingStd(shape)};
    case TensorRole::kOutput:
      return {0.0f, 1.0f / std::sqrt(hidden)};
    case TensorRole::kProjection:
      return {0.0f, 1.0f / std::sqrt(fan_in)};
    case TensorRole::kResidualOut:
      // 2 * num_layers branches of variance ~0.5 / num_layers each (attention outputs and
      // silu(g) * u have variance ~0.3-1 before this scale) add ~1 to the stream's variance.
      return {0.0f, 1.0f / std::sqrt(fan_in) / std::sqrt(static_cast<float>(shape.num_layers))};
    case TensorRole::kBias:
      return {0.0f, kBiasStd};
    case TensorRole::kNorm: {
      if (spec.name != "output_norm.weight") return {1.0f, kNormJitter};
      // logit = sum_i w_ti * g_i * x_i over a normalized x (RMS 1): std ~ w_std * g * sqrt(H).
      const float w_std = shape.tied_embeddings ? EmbeddingStd(shape) : 1.0f / std::sqrt(hidden);
      const float g = kTargetLogitStd / (w_std * std::sqrt(hidden));
      return {g, g * kNormJitter};
    }
    case TensorRole::kRopeFreqs:
      return {1.0f, 0.0f};
  }
  return {0.0f, 1.0f};
}

// Runs fn(begin, end) over [0, rows) split across threads when the tensor is large. Rows are
// generated independently, so the split never changes the bytes.
void ParallelRows(int64_t rows, int64_t row_elements,
                  const std::function<void(int64_t, int64_t)>& fn) {
  constexpr int64_t kMinElementsPerThread = 1 << 20;
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t by_size = std::max<int64_t>(1, rows * row_elements / kMinElementsPerThread);
  const int64_t num_threads = std::min({hw, by_size, rows, int64_t{16}});
  if (num_threads <= 1) {
    fn(0, rows);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(num_threads);
  for (int64_t t = 0; t < num_threads; ++t) {
    const int64_t begin = rows * t / num_threads;
    const int64_t end = rows * (t + 1) / num_threads;
    threads.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  for (std::thread& th : threads) th.join();
}

// Encodes `n` floats of `type` into dst.
void EncodeRow(GgmlType type, const float* src, uint8_t* dst, int64_t n) {
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(src[i]);
        std::memcpy(dst + 2 * i, &h, sizeof(h));
      }
      return;
    default:
      QuantizeRow(type, src, dst, n);
      return;
  }
}

absl::Status FillTensor(const PlannedTensor& tensor, const ModelShape& shape, uint64_t seed,
                        absl::Span<uint8_t> out) {
  const TensorSpec& spec = tensor.spec;
  const int64_t row_elements = spec.shape[0];
  const int64_t rows = spec.num_elements() / row_elements;
  const int64_t row_bytes = GgmlRowBytes(tensor.type, row_elements);
  if (static_cast<uint64_t>(rows * row_bytes) != out.size()) {
    return absl::InternalError(absl::StrCat("tensor ", spec.name, ": writer asked for ", out.size(),
                                            " bytes, plan has ", rows * row_bytes));
  }
  if (spec.role == TensorRole::kRopeFreqs) {
    const std::vector<float> factors = Llama3RopeFreqFactors(shape);
    if (static_cast<int64_t>(factors.size()) != row_elements) {
      return absl::InternalError("rope_freqs.weight: factor count does not match its shape");
    }
    EncodeRow(tensor.type, factors.data(), out.data(), row_elements);
    return absl::OkStatus();
  }
  uint64_t mix = seed ^ Fnv1a(spec.name);
  const uint64_t tensor_seed = SplitMix64(mix);
  const RowInit init = InitFor(spec, shape);
  ParallelRows(rows, row_elements, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(row_elements));
    for (int64_t r = begin; r < end; ++r) {
      NormalStream normal(tensor_seed, r);
      for (float& v : row) v = init.mean + init.std * normal.Next();
      EncodeRow(tensor.type, row.data(), out.data() + r * row_bytes, row_elements);
    }
  });
  return absl::OkStatus();
}

// ---- Metadata -------------------------------------------------------------------------------

GgufArray MakeArray(GgufType type) {
  GgufArray a;
  a.element_type = type;
  return a;
}

absl::Status ValidateShape(const ModelShape& s, GgmlType weight_type) {
  const auto bad = [&s](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("shape '", s.name, "': ", what));
  };
  if (s.vocab_size <= 0 || s.hidden_dim <= 0 || s.num_layers <= 0 || s.num_heads <= 0 ||
      s.num_kv_heads <= 0 || s.head_dim <= 0 || s.ffn_dim <= 0 || s.context_length <= 0) {
    return bad("every dimension must be positive");
  }
  if (s.num_heads % s.num_kv_heads != 0) {
    return bad(absl::StrCat("num_heads ", s.num_heads, " is not a multiple of num_kv_heads ",
                            s.num_kv_heads));
  }
  if (s.head_dim % 2 != 0) return bad(absl::StrCat("head_dim ", s.head_dim, " is odd"));
  if (!(s.rms_norm_eps > 0.0f) || !(s.rope_theta > 0.0f)) {
    return bad("rms_norm_eps and rope_theta must be positive");
  }
  const int64_t block = TraitsOf(weight_type).block_size;
  for (int64_t in : {s.hidden_dim, s.q_dim(), s.ffn_dim}) {
    if (in % block != 0) {
      return bad(absl::StrCat("a weight row of ", in, " elements is not a multiple of the ",
                              std::string(GgmlTypeName(weight_type)), " block size ", block));
    }
  }
  return absl::OkStatus();
}

// Copies every tokenizer.* key of a vocab GGUF; returns its token count.
absl::StatusOr<int64_t> CopyVocab(const std::string& path,
                                  std::vector<std::pair<std::string, GgufValue>>& metadata) {
  DUET_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path));
  const GgufValue* tokens = file->Find("tokenizer.ggml.tokens");
  if (tokens == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab file ", path, " has no tokenizer.ggml.tokens"));
  }
  absl::StatusOr<const GgufArray*> array = tokens->AsArray();
  if (!array.ok() || (*array)->items.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab file ", path, ": tokenizer.ggml.tokens is not a non-empty array"));
  }
  for (const auto& [key, value] : file->metadata()) {
    if (absl::StartsWith(key, "tokenizer.")) metadata.emplace_back(key, value);
  }
  return static_cast<int64_t>((*array)->items.size());
}

}  // namespace

absl::StatusOr<uint32_t> FileTypeForWeightType(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::kF32:
      return 0;
    case GgmlType::kF16:
      return 1;
    case GgmlType::kQ4_0:
      return 2;
    case GgmlType::kQ8_0:
      return 7;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("weight type ", std::string(GgmlTypeName(weight_type)),
                       " is not supported for synthetic models (supported: f32, f16, q8_0, q4_0)"));
  }
}

std::vector<std::pair<std::string, GgufValue>> BuiltinVocabMetadata(int64_t vocab_size) {
  // SentencePiece token types (llama.cpp's llama_token_type).
  constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUnused = 5, kByte = 6;
  GgufArray tokens = MakeArray(GgufType::kString);
  GgufArray scores = MakeArray(GgufType::kFloat32);
  GgufArray types = MakeArray(GgufType::kInt32);
  tokens.items.reserve(vocab_size);
  scores.items.reserve(vocab_size);
  types.items.reserve(vocab_size);
  const auto add = [&](std::string text, int32_t type) {
    tokens.items.emplace_back(std::move(text));
    scores.items.emplace_back(0.0f);
    types.items.emplace_back(type);
  };
  add("<unk>", kUnknown);
  add("<s>", kControl);
  add("</s>", kControl);
  for (int b = 0; b < 256; ++b) add(absl::StrFormat("<0x%02X>", b), kByte);
  // SentencePiece writes spaces as U+2581; without this piece a space would only exist as its
  // three byte tokens and decode as "▁" instead of " ".
  add("\u2581", kNormal);
  for (int64_t i = 0; static_cast<int64_t>(tokens.items.size()) < vocab_size; ++i) {
    add(absl::StrCat("<unused_", i, ">"), kUnused);
  }
  std::vector<std::pair<std::string, GgufValue>> md;
  md.emplace_back("tokenizer.ggml.model", GgufValue("llama"));
  md.emplace_back("tokenizer.ggml.tokens", GgufValue(std::move(tokens)));
  md.emplace_back("tokenizer.ggml.scores", GgufValue(std::move(scores)));
  md.emplace_back("tokenizer.ggml.token_type", GgufValue(std::move(types)));
  md.emplace_back("tokenizer.ggml.unknown_token_id", GgufValue(uint32_t{0}));
  md.emplace_back("tokenizer.ggml.bos_token_id", GgufValue(uint32_t{1}));
  md.emplace_back("tokenizer.ggml.eos_token_id", GgufValue(uint32_t{2}));
  md.emplace_back("tokenizer.ggml.add_bos_token", GgufValue(true));
  md.emplace_back("tokenizer.ggml.add_eos_token", GgufValue(false));
  md.emplace_back("tokenizer.ggml.add_space_prefix", GgufValue(false));
  return md;
}

absl::StatusOr<SyntheticModelPlan> PlanSyntheticModel(const SyntheticModelOptions& options) {
  DUET_ASSIGN_OR_RETURN(const uint32_t file_type, FileTypeForWeightType(options.weight_type));
  SyntheticModelPlan plan;
  plan.shape = options.shape;

  std::vector<std::pair<std::string, GgufValue>> vocab;
  if (!options.vocab_path.empty()) {
    DUET_ASSIGN_OR_RETURN(plan.shape.vocab_size, CopyVocab(options.vocab_path, vocab));
  } else {
    if (plan.shape.vocab_size < kBuiltinVocabSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape '", plan.shape.name, "': vocab_size ", plan.shape.vocab_size,
                       " is smaller than the built-in vocab (", kBuiltinVocabSize, " tokens)"));
    }
  }
  DUET_RETURN_IF_ERROR(ValidateShape(plan.shape, options.weight_type));
  if (vocab.empty()) vocab = BuiltinVocabMetadata(plan.shape.vocab_size);

  const ModelShape& s = plan.shape;
  const std::string arch(ArchitectureName(s.architecture));
  auto& md = plan.metadata;
  const auto u32 = [](int64_t v) { return GgufValue(static_cast<uint32_t>(v)); };
  md.emplace_back("general.architecture", GgufValue(arch));
  md.emplace_back("general.name", GgufValue(s.display_name.empty() ? s.name : s.display_name));
  md.emplace_back("general.file_type", GgufValue(file_type));
  if (TraitsOf(options.weight_type).block_size > 1) {
    md.emplace_back("general.quantization_version", GgufValue(uint32_t{2}));
  }
  md.emplace_back(arch + ".vocab_size", u32(s.vocab_size));
  md.emplace_back(arch + ".context_length", u32(s.context_length));
  md.emplace_back(arch + ".embedding_length", u32(s.hidden_dim));
  md.emplace_back(arch + ".block_count", u32(s.num_layers));
  md.emplace_back(arch + ".feed_forward_length", u32(s.ffn_dim));
  md.emplace_back(arch + ".attention.head_count", u32(s.num_heads));
  md.emplace_back(arch + ".attention.head_count_kv", u32(s.num_kv_heads));
  md.emplace_back(arch + ".attention.key_length", u32(s.head_dim));
  md.emplace_back(arch + ".attention.value_length", u32(s.head_dim));
  md.emplace_back(arch + ".attention.layer_norm_rms_epsilon", GgufValue(s.rms_norm_eps));
  md.emplace_back(arch + ".rope.freq_base", GgufValue(s.rope_theta));
  md.emplace_back(arch + ".rope.dimension_count", u32(s.head_dim));
  for (auto& kv : vocab) md.push_back(std::move(kv));

  for (TensorSpec& spec : TensorLayout(s)) {
    PlannedTensor t;
    t.type = RoleStaysF32(spec.role) ? GgmlType::kF32 : options.weight_type;
    t.num_bytes = static_cast<uint64_t>(GgmlRowBytes(t.type, spec.num_elements()));
    t.spec = std::move(spec);
    plan.tensors.push_back(std::move(t));
  }
  return plan;
}

absl::StatusOr<GgufWriter> BuildSyntheticModel(const SyntheticModelOptions& options) {
  DUET_ASSIGN_OR_RETURN(SyntheticModelPlan plan, PlanSyntheticModel(options));
  GgufWriter writer;
  for (auto& [key, value] : plan.metadata) writer.Set(key, std::move(value));
  // Shared by every fill callback; the writer may outlive this function.
  auto shape = std::make_shared<const ModelShape>(plan.shape);
  for (PlannedTensor& tensor : plan.tensors) {
    auto planned = std::make_shared<const PlannedTensor>(tensor);
    const uint64_t seed = options.seed;
    DUET_RETURN_IF_ERROR(writer.AddTensor(tensor.spec.name, tensor.spec.shape, tensor.type,
                                          [planned, shape, seed](absl::Span<uint8_t> out) {
                                            return FillTensor(*planned, *shape, seed, out);
                                          }));
  }
  return writer;
}

absl::Status WriteSyntheticModel(const SyntheticModelOptions& options, const std::string& out_path,
                                 const SyntheticProgressFn& progress) {
  DUET_ASSIGN_OR_RETURN(GgufWriter writer, BuildSyntheticModel(options));
  return writer.WriteFile(out_path, progress);
}

}  // namespace duet
