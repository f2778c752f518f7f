#include "common/model/calculators.h"

#include <algorithm>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/base/format.h"
#include "common/base/json.h"

namespace duet {
namespace {

// KV scale granularity (see the header comment).
constexpr int64_t kKvScaleBlockTokens = 16;   // fp8 / int8: f32 scale per 16-token block.
constexpr int64_t kKvInt4GroupElements = 32;  // int4: f16 scale per 32 elements.

// Weight scale granularity for the generic formats.
constexpr int64_t kInt4WeightGroup = 128;  // int4: f16 scale per 128 input elements.

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// a * b, or false when it overflows uint64.
bool MulOk(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

// ---- Shared helpers ---------------------------------------------------------------------------


// ---- KV cache ---------------------------------------------------------------------------------

std::string_view KvDtypeName(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32:
      return "f32";
    case KvDtype::kF16:
      return "f16";
    case KvDtype::kBF16:
      return "bf16";
    case KvDtype::kFp8:
      return "fp8";
    case KvDtype::kInt8:
      return "int8";
    case KvDtype::kInt4:
      return "int4";
  }
  return "?";
}

const std::vector<KvDtype>& AllKvDtypes() {
  static const std::vector<KvDtype>* const all = new std::vector<KvDtype>{
      KvDtype::kF32, KvDtype::kF16, KvDtype::kBF16, KvDtype::kFp8, KvDtype::kInt8, KvDtype::kInt4};
  return *all;
}

absl::StatusOr<KvDtype> ParseKvDtype(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  for (KvDtype d : AllKvDtypes()) {
    if (lower == KvDtypeName(d)) return d;
  }
  std::vector<std::string> names;
  for (KvDtype d : AllKvDtypes()) names.emplace_back(KvDtypeName(d));
  return absl::InvalidArgumentError(absl::StrCat("unknown KV dtype '", std::string(name),
                                                 "' (valid: ", absl::StrJoin(names, ", "), ")"));
}

std::string_view KvScaleGranularity(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFp8:
    case KvDtype::kInt8:
      return "f32 scale per 16-token block per KV head (K and V)";
    case KvDtype::kInt4:
      return "f16 scale per 32 elements of a head vector";
    default:
      return "none";
  }
}

KvGeometry KvGeometryOf(const ModelConfig& config) {
  return {.num_layers = config.num_layers,
          .num_heads = config.num_heads,
          .num_kv_heads = config.num_kv_heads,
          .head_dim = config.head_dim};
}

KvGeometry KvGeometryOf(const ModelShape& shape) { return KvGeometryOf(ToModelConfig(shape)); }

KvCacheEstimate EstimateKvCache(const KvGeometry& g, int64_t context_length, int64_t batch_size,
                                KvDtype dtype) {
  // K and V, per layer, per KV head, per sequence.
  const uint64_t streams = 2ull * g.num_layers * g.num_kv_heads * batch_size;
  const uint64_t elements = streams * g.head_dim * context_length;
  KvCacheEstimate e;
  e.dtype = dtype;
  switch (dtype) {
    case KvDtype::kF32:
      e.data_bytes = elements * 4;
      break;
    case KvDtype::kF16:
    case KvDtype::kBF16:
      e.data_bytes = elements * 2;
      break;
    case KvDtype::kFp8:
    case KvDtype::kInt8:
      e.data_bytes = elements;
      e.scale_bytes = streams * CeilDiv(context_length, kKvScaleBlockTokens) * 4;
      break;
    case KvDtype::kInt4:
      // Two values per byte within each head vector.
      e.data_bytes = streams * context_length * CeilDiv(g.head_dim, 2);
      e.scale_bytes = streams * context_length * CeilDiv(g.head_dim, kKvInt4GroupElements) * 2;
      break;
  }
  return e;
}

absl::StatusOr<KvCacheReport> BuildKvCacheReport(std::string model_name, const KvGeometry& g,
                                                 int64_t context_length, int64_t batch_size,
                                                 absl::Span<const KvDtype> dtypes) {
  if (g.num_layers <= 0 || g.num_kv_heads <= 0 || g.head_dim <= 0 || g.num_heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model geometry must be positive (layers ", g.num_layers, ", heads ",
                     g.num_heads, ", KV heads ", g.num_kv_heads, ", head_dim ", g.head_dim, ")"));
  }
  if (context_length <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("context length must be positive, got ", context_length));
  }
  if (batch_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch size must be positive, got ", batch_size));
  }
  // The largest product is f32 data: 2 * layers * kv_heads * head_dim * context * batch * 4.
  uint64_t p = 8;
  for (int64_t f : {g.num_layers, g.num_kv_heads, g.head_dim, context_length, batch_size}) {
    if (!MulOk(p, static_cast<uint64_t>(f), &p) || p > (uint64_t{1} << 62)) {
      return absl::InvalidArgumentError("KV cache size overflows 64 bits; use smaller values");
    }
  }
  KvCacheReport report;
  report.model_name = std::move(model_name);
  report.geometry = g;
  report.context_length = context_length;
  report.batch_size = batch_size;
  for (KvDtype d : dtypes)
    report.estimates.push_back(EstimateKvCache(g, context_length, batch_size, d));
  return report;
}

std::string RenderKvCacheText(const KvCacheReport& r) {
  const KvGeometry& g = r.geometry;
  std::string out = absl::StrFormat(
      "KV cache for %s: %d layers x %d KV heads x head_dim %d (%d query heads, %s)\n"
      "context %d tokens x batch %d = %d tokens\n\n",
      r.model_name, g.num_layers, g.num_kv_heads, g.head_dim, g.num_heads,
      g.num_kv_heads == g.num_heads ? std::string("MHA")
      : g.num_kv_heads == 1         ? std::string("MQA")
                                    : absl::StrCat("GQA ", g.num_heads / g.num_kv_heads, ":1"),
      r.context_length, r.batch_size, r.context_length * r.batch_size);
  absl::StrAppendFormat(&out, "%-6s %14s %12s %22s %12s  %s\n", "dtype", "bytes/token", "total",
                        "total bytes", "scales", "scale granularity");
  const double tokens = static_cast<double>(r.context_length * r.batch_size);
  for (const KvCacheEstimate& e : r.estimates) {
    absl::StrAppendFormat(&out, "%-6s %14.1f %12s %22d %12s  %s\n", KvDtypeName(e.dtype),
                          static_cast<double>(e.total_bytes()) / tokens,
                          FormatBytes(e.total_bytes()), e.total_bytes(), FormatBytes(e.scale_bytes),
                          KvScaleGranularity(e.dtype));
  }
  return out;
}

std::string RenderKvCacheJson(const KvCacheReport& r) {
  const KvGeometry& g = r.geometry;
  std::string out = absl::StrFormat(
      "{\"model\": %s, \"num_layers\": %d, \"num_heads\": %d, \"num_kv_heads\": %d, "
      "\"head_dim\": %d, \"context_length\": %d, \"batch_size\": %d, \"estimates\": [",
      JsonString(r.model_name), g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim,
      r.context_length, r.batch_size);
  const double tokens = static_cast<double>(r.context_length * r.batch_size);
  for (size_t i = 0; i < r.estimates.size(); ++i) {
    const KvCacheEstimate& e = r.estimates[i];
    absl::StrAppendFormat(
        &out,
        "%s{\"dtype\": %s, \"data_bytes\": %d, \"scale_bytes\": %d, \"total_bytes\": %d, "
        "\"bytes_per_token\": %.3f, \"scale_granularity\": %s}",
        i == 0 ? "" : ", ", JsonString(KvDtypeName(e.dtype)), e.data_bytes, e.scale_bytes,
        e.total_bytes(), static_cast<double>(e.total_bytes()) / tokens,
        JsonString(KvScaleGranularity(e.dtype)));
  }
  out += "]}\n";
  return out;
}

// ---- Weight memory ----------------------------------------------------------------------------

const std::vector<WeightFormat>& AllWeightFormats() {
  static const std::vector<WeightFormat>* const all = new std::vector<WeightFormat>{
      {"f32", true, GgmlType::kF32, 32},   {"f16", true, GgmlType::kF16, 16},
      {"bf16", true, GgmlType::kBF16, 16}, {"int8", false, GgmlType::kI8, 8},
      {"q8_0", true, GgmlType::kQ8_0, 8},  {"q6_k", true, GgmlType::kQ6_K, 6},
      {"q5_k", true, GgmlType::kQ5_K, 5},  {"q5_1", true, GgmlType::kQ5_1, 5},
      {"q5_0", true, GgmlType::kQ5_0, 5},  {"int4", false, GgmlType::kI8, 4},
      {"q4_k", true, GgmlType::kQ4_K, 4},  {"q4_1", true, GgmlType::kQ4_1, 4},
      {"q4_0", true, GgmlType::kQ4_0, 4},  {"q3_k", true, GgmlType::kQ3_K, 3},
      {"q2_k", true, GgmlType::kQ2_K, 2},
  };
  return *all;
}

namespace {

// Nominal bits per value of the types a fallback can land on.
int ValueBitsOf(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return 32;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return 16;
    case GgmlType::kQ8_0:
      return 8;
    case GgmlType::kQ6_K:
      return 6;
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ5_K:
      return 5;
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ4_K:
    case GgmlType::kIQ4_NL:
      return 4;
    case GgmlType::kQ3_K:
      return 3;
    case GgmlType::kQ2_K:
      return 2;
    default:
      return 0;
  }
}

// The type llama.cpp's quantizer stores a row of `row` elements in when asked for `type`.
GgmlType EffectiveType(GgmlType type, int64_t row) {
  if (row % TraitsOf(type).block_size == 0) return type;
  GgmlType fallback = GgmlType::kF16;
  switch (type) {
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
      fallback = GgmlType::kIQ4_NL;
      break;
    case GgmlType::kQ4_K:
      fallback = GgmlType::kQ5_0;
      break;
    case GgmlType::kQ5_K:
      fallback = GgmlType::kQ5_1;
      break;
    case GgmlType::kQ6_K:
      fallback = GgmlType::kQ8_0;
      break;
    default:
      break;
  }
  return row % TraitsOf(fallback).block_size == 0 ? fallback : GgmlType::kF16;
}

struct TensorBytes {
  uint64_t bytes = 0;
  uint64_t overhead = 0;
};

TensorBytes GgmlTensorBytes(GgmlType type, int64_t elements) {
  const GgmlTypeTraits& t = TraitsOf(type);
  const uint64_t blocks = static_cast<uint64_t>(elements / t.block_size);
  const uint64_t bytes = blocks * static_cast<uint64_t>(t.type_size);
  const uint64_t values = static_cast<uint64_t>(elements) * ValueBitsOf(type) / 8;
  return {bytes, bytes - std::min(bytes, values)};
}

WeightMemoryEstimate EstimateFormat(const WeightFormat& f, absl::Span<const TensorSpec> tensors) {
  WeightMemoryEstimate e;
  e.format = std::string(f.name);
  int64_t weight_elements = 0;
  // Fallbacks grouped by (row length, type) for the note.
  std::map<std::pair<int64_t, std::string>, int64_t> fallbacks;
  for (const TensorSpec& t : tensors) {
    const int64_t n = t.num_elements();
    if (RoleStaysF32(t.role)) {
      e.f32_bytes += static_cast<uint64_t>(n) * 4;
      continue;
    }
    weight_elements += n;
    const int64_t row = t.shape[0];
    const int64_t rows = n / row;
    TensorBytes b;
    if (!f.is_ggml && f.value_bits == 8) {
      b.overhead = static_cast<uint64_t>(rows) * 4;
      b.bytes = static_cast<uint64_t>(n) + b.overhead;
    } else if (!f.is_ggml) {
      b.overhead = static_cast<uint64_t>(rows * CeilDiv(row, kInt4WeightGroup)) * 2;
      b.bytes = static_cast<uint64_t>(rows * CeilDiv(row, 2)) + b.overhead;
    } else {
      const GgmlType type = EffectiveType(f.ggml_type, row);
      if (type != f.ggml_type) {
        ++e.fallback_tensors;
        ++fallbacks[{row, std::string(GgmlTypeName(type))}];
      }
      b = GgmlTensorBytes(type, n);
    }
    e.weight_bytes += b.bytes;
    e.overhead_bytes += b.overhead;
  }
  e.total_bytes = e.weight_bytes + e.f32_bytes;
  e.bits_per_weight = weight_elements == 0 ? 0.0
                                           : static_cast<double>(e.weight_bytes) * 8.0 /
                                                 static_cast<double>(weight_elements);
  std::vector<std::string> notes;
  for (const auto& [key, count] : fallbacks) {
    notes.push_back(
        absl::StrCat(count, " tensors with ", key.first, "-element rows -> ", key.second));
  }
  e.fallback_note = absl::StrJoin(notes, "; ");
  return e;
}

}  // namespace

std::vector<TensorSpec> TensorSpecsFromGguf(const GgufFile& file) {
  std::vector<TensorSpec> specs;
  for (const GgufTensorInfo& info : file.tensors()) {
    TensorSpec spec;
    spec.name = info.name;
    spec.shape = info.shape;
    if (info.shape.size() <= 1) {
      if (info.name == "rope_freqs.weight") {
        spec.role = TensorRole::kRopeFreqs;
      } else if (absl::EndsWith(info.name, ".bias")) {
        spec.role = TensorRole::kBias;
      } else {
        spec.role = TensorRole::kNorm;
      }
    } else if (info.name == "token_embd.weight") {
      spec.role = TensorRole::kEmbedding;
    } else if (info.name == "output.weight") {
      spec.role = TensorRole::kOutput;
    } else {
      spec.role = TensorRole::kProjection;
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

absl::StatusOr<QuantReport> BuildQuantReport(std::string model_name,
                                             absl::Span<const TensorSpec> tensors) {
  if (tensors.empty()) return absl::InvalidArgumentError("the model has no tensors");
  QuantReport r;
  r.model_name = std::move(model_name);
  for (const TensorSpec& t : tensors) {
    if (t.shape.empty() ||
        std::any_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d <= 0; })) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name, " has a non-positive or empty shape"));
    }
    const int64_t n = t.num_elements();
    if (t.role != TensorRole::kRopeFreqs) r.num_parameters += n;
    if (RoleStaysF32(t.role)) {
      r.f32_elements += n;
      ++r.num_f32_tensors;
    } else {
      r.weight_elements += n;
      ++r.num_weight_tensors;
    }
  }
  for (const WeightFormat& f : AllWeightFormats())
    r.estimates.push_back(EstimateFormat(f, tensors));
  return r;
}

std::string RenderQuantText(const QuantReport& r) {
  std::string out = absl::StrFormat(
      "Weight memory for %s: %d parameters\n"
      "  %d 2-D weight tensors (%d elements) take the listed type (pure, no per-tensor mix)\n"
      "  %d 1-D tensors (norms, biases, rope_freqs; %d elements) stay f32\n"
      "  int8: f32 scale per output row; int4: f16 scale per 128-element group\n\n",
      r.model_name, r.num_parameters, r.num_weight_tensors, r.weight_elements, r.num_f32_tensors,
      r.f32_elements);
  absl::StrAppendFormat(&out, "%-6s %12s %18s %8s %12s %10s  %s\n", "type", "total", "total bytes",
                        "bits/w", "overhead", "f32 kept", "notes");
  for (const WeightMemoryEstimate& e : r.estimates) {
    std::string line =
        absl::StrFormat("%-6s %12s %18d %8.3f %12s %10s  %s", e.format, FormatBytes(e.total_bytes),
                        e.total_bytes, e.bits_per_weight, FormatBytes(e.overhead_bytes),
                        FormatBytes(e.f32_bytes), e.fallback_note);
    line.erase(line.find_last_not_of(' ') + 1);
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string RenderQuantJson(const QuantReport& r) {
  std::string out = absl::StrFormat(
      "{\"model\": %s, \"num_parameters\": %d, \"weight_elements\": %d, "
      "\"num_weight_tensors\": %d, \"f32_elements\": %d, \"num_f32_tensors\": %d, "
      "\"estimates\": [",
      JsonString(r.model_name), r.num_parameters, r.weight_elements, r.num_weight_tensors,
      r.f32_elements, r.num_f32_tensors);
  for (size_t i = 0; i < r.estimates.size(); ++i) {
    const WeightMemoryEstimate& e = r.estimates[i];
    absl::StrAppendFormat(
        &out,
        "%s{\"type\": %s, \"total_bytes\": %d, \"weight_bytes\": %d, \"overhead_bytes\": %d, "
        "\"f32_bytes\": %d, \"bits_per_weight\": %.4f, \"fallback_tensors\": %d, "
        "\"fallback_note\": %s}",
        i == 0 ? "" : ", ", JsonString(e.format), e.total_bytes, e.weight_bytes, e.overhead_bytes,
        e.f32_bytes, e.bits_per_weight, e.fallback_tensors, JsonString(e.fallback_note));
  }
  out += "]}\n";
  return out;
}

}  // namespace duet
