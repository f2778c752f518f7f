// GGML tensor element types as GGUF files name them, with their block layout.
#ifndef DUET_COMMON_MODEL_GGML_TYPES_H_
#define DUET_COMMON_MODEL_GGML_TYPES_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace duet {

// Numeric values are the on-disk ids from ggml.h; never renumber.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

// Layout of one type: `block_size` elements are stored in `type_size` bytes.
struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;  // As ggml spells it: "f32", "q8_0", "bf16", ...
  int64_t block_size;     // Elements per block (1 for plain types, 32 for Q8_0/Q4_0, 256 for K).
  int64_t type_size;      // Bytes per block.
  bool supported;         // Duet can dequantize (and quantize) it: F32, F16, BF16, Q8_0, Q4_0.
};

// Traits for a raw on-disk id. INVALID_ARGUMENT names the id when it is not a GGML type.
absl::StatusOr<GgmlTypeTraits> GetGgmlTypeTraits(uint32_t raw_type);
// Same for a known enum value (never fails).
const GgmlTypeTraits& TraitsOf(GgmlType type);
std::string_view GgmlTypeName(GgmlType type);
// Parses "f32", "F16", "q8_0", ... (case-insensitive). INVALID_ARGUMENT lists the valid names.
absl::StatusOr<GgmlType> ParseGgmlType(std::string_view name);

// Bytes that `num_elements` of `type` occupy. REQUIRES: num_elements % block_size == 0.
int64_t GgmlRowBytes(GgmlType type, int64_t num_elements);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_GGML_TYPES_H_
