// GGUF writer: lays out a v3 file exactly as the GGUF specification does.
//
// Metadata is written in insertion order; tensor infos in AddTensor order, offsets aligned to
// `general.alignment` (32 unless set), data section padded with zeros. Tensor payloads are
// produced lazily by a fill callback, so writing a multi-GiB model never holds it in memory.
#ifndef DUET_COMMON_MODEL_GGUF_WRITER_H_
#define DUET_COMMON_MODEL_GGUF_WRITER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model/ggml_types.h"
#include "common/model/gguf.h"

namespace duet {

class GgufWriter {
 public:
  // Fills `out` (exactly the tensor's num_bytes) with its encoded data.
  using FillFn = std::function<absl::Status(absl::Span<uint8_t> out)>;

  // Sets (or replaces, keeping the original position) a metadata key. Setting
  // "general.alignment" (uint32, power of two) changes the layout.
  void Set(const std::string& key, GgufValue value);

  // Adds a tensor. shape is in ggml order (shape[0] innermost). INVALID_ARGUMENT for a
  // duplicate name, an empty or non-positive shape, shape[0] not a multiple of the type's block
  // size, or an unsupported type.
  absl::Status AddTensor(const std::string& name, std::vector<int64_t> shape, GgmlType type,
                         FillFn fill);
  // Convenience: data already encoded; its size must equal the tensor's byte size.
  absl::Status AddTensor(const std::string& name, std::vector<int64_t> shape, GgmlType type,
                         std::vector<uint8_t> data);

  // Total bytes the file will take.
  uint64_t FileSize() const;

  // Writes the file (via path + ".tmp" and a rename, so a failed write leaves no partial
  // file). Each fill callback runs once, one tensor at a time, into a buffer of that tensor's
  // size. `progress`, if set, is called with bytes written so far. INVALID_ARGUMENT when the
  // metadata is malformed (see Validate); a fill callback's error is returned as is.
  absl::Status WriteFile(const std::string& path,
                         const std::function<void(uint64_t done, uint64_t total)>& progress = {}) const;
  absl::StatusOr<std::vector<uint8_t>> WriteToBuffer() const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    GgmlType type;
    uint64_t num_bytes;
    FillFn fill;
  };

  // general.alignment when it is a power-of-two uint32, else 32 (WriteFile then fails).
  uint64_t Alignment() const;
  // Bytes before the data section, without its padding.
  uint64_t HeaderBytes() const;
  // INVALID_ARGUMENT for an empty key, a malformed general.alignment, or an array whose items do
  // not all have its element type or that nests deeper than the reader accepts.
  absl::Status Validate() const;
  // Header, metadata and tensor infos, padded with zeros to the data section's start.
  std::vector<uint8_t> EncodeHeader() const;

  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace duet

#endif  // DUET_COMMON_MODEL_GGUF_WRITER_H_
