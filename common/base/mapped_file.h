// Read-only memory mapping of a whole file.
#ifndef DUET_COMMON_BASE_MAPPED_FILE_H_
#define DUET_COMMON_BASE_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace duet {

// Owns a read-only mapping; the bytes stay valid for the object's lifetime.
// Thread safety: immutable after Open, safe to share between threads.
class MappedFile {
 public:
  // Maps `path`. Errors: NOT_FOUND (missing), PERMISSION_DENIED, INVALID_ARGUMENT (a directory),
  // INTERNAL (mmap failure). An empty file maps to an empty span.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  absl::Span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

}  // namespace duet

#endif  // DUET_COMMON_BASE_MAPPED_FILE_H_
