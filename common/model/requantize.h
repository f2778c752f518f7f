// In-memory requantization of a model GGUF: re-encodes its 2-D weight matrices to Q4_0 or
// Q8_0 and copies everything else, so one downloaded file can be served (and tested) at a
// smaller weight type, e.g. a quantized copy of a model as its own draft model.
#ifndef DUET_COMMON_MODEL_REQUANTIZE_H_
#define DUET_COMMON_MODEL_REQUANTIZE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "common/model/ggml_types.h"
#include "common/model/gguf.h"

namespace duet {

// A copy of `source` (same metadata in the same order, as is, general.file_type included;
// same tensors in the same order) in which every eligible tensor is re-encoded to
// `weight_type`: a name ending in ".weight", 2 dimensions (token_embd and output included),
// shape[0] (the row length) a multiple of 32, and a type among F32, F16, BF16, Q8_0 and Q4_0
// other than weight_type (a tensor already of weight_type is copied, since decoding and
// re-encoding it could only add error). Each row is decoded with DequantizeRow and encoded
// with QuantizeRow (ggml's reference quantizers). Every other tensor (norms, biases, rows of
// other lengths) is copied byte for byte.
//
// The result is built and parsed in memory (GgufWriter::WriteToBuffer, GgufFile::Parse); the
// returned file owns its bytes, which live as long as any copy of the pointer. Peak memory is
// the new file plus one row of floats. `source` is only read during the call.
// INVALID_ARGUMENT when weight_type is not Q4_0 or Q8_0, or (from GgufWriter, which only
// writes the types Duet can encode) when the source holds a tensor of another type, e.g. a
// K-quant.
absl::StatusOr<std::shared_ptr<const GgufFile>> RequantizeGguf(const GgufFile& source,
                                                               GgmlType weight_type);

}  // namespace duet

#endif  // DUET_COMMON_MODEL_REQUANTIZE_H_
