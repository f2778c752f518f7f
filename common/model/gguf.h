// GGUF reader: parses a GGUF v2/v3 file (header, metadata, tensor infos) from memory.
//
// Layout (little-endian): magic "GGUF", u32 version, u64 tensor_count, u64 metadata_kv_count,
// then metadata (string key, u32 value type, value), then tensor infos (string name,
// u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset), padding to `general.alignment`
// (default 32), then tensor data. Strings are u64 length + bytes (no terminator). Arrays are
// u32 element type + u64 count + elements, and may nest.
//
// Every length, count, offset and size is checked against the buffer before use, so a
// truncated or corrupt file yields INVALID_ARGUMENT naming what is wrong and where (byte
// offset), never a crash or an unbounded allocation. Limits: metadata arrays hold at most 2^24
// items and nest at most 8 deep; tensors have 1..4 dimensions. Only the padding after the last
// tensor may be missing (as llama.cpp allows); every tensor's bytes must lie inside the file.
#ifndef DUET_COMMON_MODEL_GGUF_H_
#define DUET_COMMON_MODEL_GGUF_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/base/mapped_file.h"
#include "common/model/ggml_types.h"

namespace duet {

// On-disk metadata value type ids (GGUF spec); never renumber.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufTypeName(GgufType type);

class GgufValue;

struct GgufArray {
  GgufType element_type = GgufType::kUint8;
  std::vector<GgufValue> items;  // Every item has element_type (arrays may nest).
};

// One metadata value. Cheap to move; copying copies arrays.
class GgufValue {
 public:
  using Storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float,
                               bool, std::string, GgufArray, uint64_t, int64_t, double>;

  GgufValue() : storage_(uint8_t{0}) {}
  // Constructors pick the GGUF type from the C++ type.
  template <typename T>
  explicit GgufValue(T v) : storage_(std::move(v)) {}
  explicit GgufValue(const char* s) : storage_(std::string(s)) {}

  GgufType type() const { return static_cast<GgufType>(storage_.index()); }
  const Storage& storage() const { return storage_; }

  // Typed views. INVALID_ARGUMENT when the stored type does not fit.
  // AsInt accepts any integer type (and bool); AsUint additionally rejects negatives.
  absl::StatusOr<int64_t> AsInt() const;
  absl::StatusOr<uint64_t> AsUint() const;
  // Accepts float32/float64 and integers.
  absl::StatusOr<double> AsDouble() const;
  absl::StatusOr<bool> AsBool() const;
  absl::StatusOr<std::string_view> AsString() const;
  absl::StatusOr<const GgufArray*> AsArray() const;

  // A short human-readable rendering (arrays abbreviated), for `duet inspect`.
  std::string DebugString(size_t max_items = 8) const;

 private:
  Storage storage_;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // ggml order: shape[0] is the innermost (contiguous) dimension.
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;         // From the start of the data section.
  uint64_t num_bytes = 0;      // GgmlRowBytes over all elements.
  const uint8_t* data = nullptr;  // Points into the file's bytes.

  int64_t num_elements() const;
};

class GgufFile {
 public:
  // Maps and parses `path`. Errors name the path.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses `bytes` in place. REQUIRES: bytes outlive the returned object.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(absl::Span<const uint8_t> bytes);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // Start of the tensor data section.
  uint64_t file_size() const { return bytes_.size(); }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;  // nullptr when absent.

  // Typed lookups. NOT_FOUND names a missing key; INVALID_ARGUMENT a type mismatch.
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<double> GetDouble(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<double>> GetDoubleArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

  // Tensor infos in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;  // nullptr when absent.

 private:
  GgufFile() = default;

  std::unique_ptr<MappedFile> mapping_;  // Set by Open; null for Parse.
  absl::Span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace duet

#endif  // DUET_COMMON_MODEL_GGUF_H_
