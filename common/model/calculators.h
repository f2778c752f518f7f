// Memory calculators: KV cache size for a model at a context length and batch, and weight
// memory across quantization types. Pure arithmetic; both render a text table and JSON.
//
// KV cache. Every layer stores K and V for every KV head (GQA/MQA: num_kv_heads, not
// num_heads) of every token: data = 2 * num_layers * num_kv_heads * head_dim * context *
// batch * element size. Quantized types add scales, with this granularity:
//   fp8 (E4M3), int8: one f32 scale per 16-token block per KV head per layer, for K and V
//                     separately (blocks = ceil(context / 16) per sequence), as Duet's KV
//                     blocks store them.
//   int4:             one f16 scale per group of 32 consecutive elements of a head vector
//                     (groups = ceil(head_dim / 32) per token per KV head), as Q4_0 does.
// f32, f16 and bf16 have no scales.
//
// Weight memory. Every 2-D weight (token_embd and output included) takes the listed type,
// like `llama-quantize --pure`; 1-D tensors (norms, biases, rope_freqs) stay f32 as
// llama.cpp keeps them. "Overhead" is the bytes spent on scales/mins beyond the nominal
// bits of the values (q8_0: 2 of every 34 bytes). Generic (non-GGUF) types:
//   int8: one f32 scale per output row (per channel).
//   int4: one f16 scale per group of 128 input elements (GPTQ/AWQ-style group size).
// GGUF block types use their real ggml block layouts. A K-quant (256-element blocks) cannot
// encode a row whose length is not a multiple of 256; such tensors fall back as llama.cpp's
// quantizer does (q2_k/q3_k -> iq4_nl, q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0), and any row
// still not block-aligned stays f16.
#ifndef DUET_COMMON_MODEL_CALCULATORS_H_
#define DUET_COMMON_MODEL_CALCULATORS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model/ggml_types.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"
#include "common/model/shapes.h"

namespace duet {

// ---- Shared helpers ---------------------------------------------------------------------------


// ---- KV cache ---------------------------------------------------------------------------------

enum class KvDtype { kF32, kF16, kBF16, kFp8, kInt8, kInt4 };

std::string_view KvDtypeName(KvDtype dtype);  // "f32", "f16", "bf16", "fp8", "int8", "int4"
// Parses a name as KvDtypeName spells it (case-insensitive). INVALID_ARGUMENT lists the names.
absl::StatusOr<KvDtype> ParseKvDtype(std::string_view name);
// Every KV dtype, widest first (what "--kv-dtype all" shows).
const std::vector<KvDtype>& AllKvDtypes();
// The scale granularity assumed for `dtype`, in words ("none" for f32/f16/bf16).
std::string_view KvScaleGranularity(KvDtype dtype);

// What the cache size depends on.
struct KvGeometry {
  int64_t num_layers = 0;
  int64_t num_heads = 0;  // Query heads, reported only (for the GQA ratio).
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
};
KvGeometry KvGeometryOf(const ModelConfig& config);
KvGeometry KvGeometryOf(const ModelShape& shape);

struct KvCacheEstimate {
  KvDtype dtype = KvDtype::kF16;
  uint64_t data_bytes = 0;   // K and V values.
  uint64_t scale_bytes = 0;  // Quantization scales (0 for f32/f16/bf16).
  uint64_t total_bytes() const { return data_bytes + scale_bytes; }
};

// REQUIRES: every geometry field, context_length and batch_size positive.
KvCacheEstimate EstimateKvCache(const KvGeometry& geometry, int64_t context_length,
                                int64_t batch_size, KvDtype dtype);

struct KvCacheReport {
  std::string model_name;
  KvGeometry geometry;
  int64_t context_length = 0;
  int64_t batch_size = 0;
  std::vector<KvCacheEstimate> estimates;  // One per requested dtype, in request order.
};

// INVALID_ARGUMENT when a size is not positive or the product overflows 64 bits.
absl::StatusOr<KvCacheReport> BuildKvCacheReport(std::string model_name, const KvGeometry& geometry,
                                                 int64_t context_length, int64_t batch_size,
                                                 absl::Span<const KvDtype> dtypes);
std::string RenderKvCacheText(const KvCacheReport& report);
std::string RenderKvCacheJson(const KvCacheReport& report);

// ---- Weight memory ----------------------------------------------------------------------------

// A storage format for the 2-D weights.
struct WeightFormat {
  std::string_view name;  // "f16", "int4", "q4_k", ...
  // GGUF formats use `ggml_type`; generic int8/int4 use the granularity described above.
  bool is_ggml = true;
  GgmlType ggml_type = GgmlType::kF32;
  int value_bits = 0;  // Nominal bits per value, excluding scales.
};

// Every format the calculator reports, widest first: f32, f16, bf16, int8, q8_0, q6_k, q5_k,
// q5_1, q5_0, int4, q4_k, q4_1, q4_0, q3_k, q2_k.
const std::vector<WeightFormat>& AllWeightFormats();

struct WeightMemoryEstimate {
  std::string format;
  uint64_t total_bytes = 0;      // Everything: 2-D weights in the format plus f32 tensors.
  uint64_t weight_bytes = 0;     // The 2-D weights, scales included.
  uint64_t overhead_bytes = 0;   // Scale/min bytes within weight_bytes.
  uint64_t f32_bytes = 0;        // 1-D tensors kept in f32.
  double bits_per_weight = 0;    // weight_bytes * 8 / 2-D weight elements.
  int64_t fallback_tensors = 0;  // Tensors stored in another type (see the header comment).
  std::string fallback_note;     // e.g. "24 tensors with 896-element rows -> q5_0"; may be empty.
};

struct QuantReport {
  std::string model_name;
  int64_t num_parameters = 0;   // Every tensor except rope_freqs.weight.
  int64_t weight_elements = 0;  // Elements of 2-D tensors.
  int64_t num_weight_tensors = 0;
  int64_t f32_elements = 0;  // Elements of 1-D tensors (norms, biases, rope_freqs).
  int64_t num_f32_tensors = 0;
  std::vector<WeightMemoryEstimate> estimates;  // One per AllWeightFormats() entry.
};

// Tensors of a GGUF as specs: 1-D tensors get an f32-kept role (kNorm, kBias or kRopeFreqs by
// name), others kProjection. Shapes are as in the file.
std::vector<TensorSpec> TensorSpecsFromGguf(const GgufFile& file);

// INVALID_ARGUMENT when `tensors` is empty or holds a non-positive dimension.
absl::StatusOr<QuantReport> BuildQuantReport(std::string model_name,
                                             absl::Span<const TensorSpec> tensors);
std::string RenderQuantText(const QuantReport& report);
std::string RenderQuantJson(const QuantReport& report);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_CALCULATORS_H_
