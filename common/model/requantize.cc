// In-memory requantization of a model GGUF (see requantize.h).
#include "common/model/requantize.h"

#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/base/status.h"
#include "common/model/gguf_writer.h"
#include "common/model/quant.h"

namespace duet {
namespace {

constexpr int64_t kQuantBlock = 32;  // Q4_0 and Q8_0 block size.

bool IsRequantizable(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
      return true;
    default:
      return false;
  }
}

bool IsEligible(const GgufTensorInfo& tensor, GgmlType weight_type) {
  const std::string_view name = tensor.name;
  constexpr std::string_view kSuffix = ".weight";
  return name.size() >= kSuffix.size() && name.substr(name.size() - kSuffix.size()) == kSuffix &&
         tensor.shape.size() == 2 && tensor.shape[0] % kQuantBlock == 0 &&
         tensor.type != weight_type && IsRequantizable(tensor.type);
}

// The parsed file and the bytes it points into, freed together.
struct OwnedGguf {
  std::vector<uint8_t> bytes;
  std::unique_ptr<GgufFile> file;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const GgufFile>> RequantizeGguf(const GgufFile& source,
                                                               GgmlType weight_type) {
  if (weight_type != GgmlType::kQ4_0 && weight_type != GgmlType::kQ8_0) {
    return absl::InvalidArgumentError(
        absl::StrCat("requantize: weight type must be q4_0 or q8_0, got ",
                     std::string(GgmlTypeName(weight_type))));
  }
  GgufWriter writer;
  for (const auto& [key, value] : source.metadata()) writer.Set(key, value);
  for (const GgufTensorInfo& tensor : source.tensors()) {
    const GgufTensorInfo* info = &tensor;  // The source outlives WriteToBuffer below.
    if (!IsEligible(tensor, weight_type)) {
      DUET_RETURN_IF_ERROR(
          writer.AddTensor(tensor.name, tensor.shape, tensor.type, [info](absl::Span<uint8_t> out) {
            std::memcpy(out.data(), info->data, out.size());
            return absl::OkStatus();
          }));
      continue;
    }
    DUET_RETURN_IF_ERROR(writer.AddTensor(
        tensor.name, tensor.shape, weight_type, [info, weight_type](absl::Span<uint8_t> out) {
          const int64_t row_length = info->shape[0];
          const size_t in_row = static_cast<size_t>(GgmlRowBytes(info->type, row_length));
          const size_t out_row = static_cast<size_t>(GgmlRowBytes(weight_type, row_length));
          std::vector<float> row(static_cast<size_t>(row_length));
          for (int64_t r = 0; r < info->shape[1]; ++r) {
            const size_t i = static_cast<size_t>(r);
            DequantizeRow(info->type, info->data + i * in_row, row.data(), row_length);
            QuantizeRow(weight_type, row.data(), out.data() + i * out_row, row_length);
          }
          return absl::OkStatus();
        }));
  }
  auto owned = std::make_shared<OwnedGguf>();
  DUET_ASSIGN_OR_RETURN(owned->bytes, writer.WriteToBuffer());
  DUET_ASSIGN_OR_RETURN(owned->file, GgufFile::Parse(owned->bytes));
  // Aliasing constructor: the pointer is the file, the ownership is the pair.
  return std::shared_ptr<const GgufFile>(owned, owned->file.get());
}

}  // namespace duet
