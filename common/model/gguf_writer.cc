#include "common/model/gguf_writer.h"

#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/status.h"

namespace duet {
namespace {

static_assert(std::endian::native == std::endian::little, "the GGUF writer assumes little-endian");

constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;  // Must match the reader's limit so written files read back.
constexpr int kMaxDims = 4;
constexpr char kAlignmentKey[] = "general.alignment";

// absl here has its own string_view; public names are std::string_view.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t AlignUp(uint64_t v, uint64_t alignment) { return (v + alignment - 1) & ~(alignment - 1); }

template <typename T>
void Put(std::vector<uint8_t>* out, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out->insert(out->end(), p, p + sizeof(T));
}

void PutString(std::vector<uint8_t>* out, std::string_view s) {
  Put<uint64_t>(out, s.size());
  out->insert(out->end(), s.begin(), s.end());
}

// Encoded size of a value without its leading type id.
uint64_t ValueBytes(const GgufValue& v) {
  return std::visit(
      [](const auto& x) -> uint64_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return 8 + x.size();
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          uint64_t n = 4 + 8;
          for (const GgufValue& item : x.items) n += ValueBytes(item);
          return n;
        } else {
          return sizeof(T);  // bool is one byte, like GGUF's.
        }
      },
      v.storage());
}

// Appends a value without its leading type id (arrays carry their element type).
void EncodeValue(std::vector<uint8_t>* out, const GgufValue& v) {
  std::visit(
      [out](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          PutString(out, x);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          Put<uint32_t>(out, static_cast<uint32_t>(x.element_type));
          Put<uint64_t>(out, x.items.size());
          for (const GgufValue& item : x.items) EncodeValue(out, item);
        } else if constexpr (std::is_same_v<T, bool>) {
          Put<uint8_t>(out, x ? 1 : 0);
        } else {
          Put<T>(out, x);
        }
      },
      v.storage());
}

// `depth` counts the arrays enclosing `v`.
absl::Status ValidateValue(const GgufValue& v, int depth, absl::string_view key) {
  const GgufArray* array = std::get_if<GgufArray>(&v.storage());
  if (array == nullptr) return absl::OkStatus();
  if (depth >= kMaxArrayDepth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF key '", key, "': arrays nested deeper than ", kMaxArrayDepth, " levels"));
  }
  for (size_t i = 0; i < array->items.size(); ++i) {
    const GgufValue& item = array->items[i];
    if (item.type() != array->element_type) {
      return absl::InvalidArgumentError(absl::StrCat(
          "GGUF key '", key, "': array item ", i, " is ", Sv(GgufTypeName(item.type())),
          " but the array holds ", Sv(GgufTypeName(array->element_type))));
    }
    DUET_RETURN_IF_ERROR(ValidateValue(item, depth + 1, key));
  }
  return absl::OkStatus();
}

// Closes and removes a temporary file unless released.
class TempFile {
 public:
  TempFile(std::string path, std::FILE* f) : path_(std::move(path)), f_(f) {}
  ~TempFile() {
    if (f_ != nullptr) std::fclose(f_);
    if (!released_) std::remove(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  absl::Status Write(const void* data, size_t n) {
    if (n > 0 && std::fwrite(data, 1, n, f_) != n) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path_));
    }
    return absl::OkStatus();
  }

  absl::Status WriteZeros(uint64_t n) {
    static constexpr uint8_t kZeros[4096] = {};
    while (n > 0) {
      const size_t chunk = n < sizeof(kZeros) ? static_cast<size_t>(n) : sizeof(kZeros);
      DUET_RETURN_IF_ERROR(Write(kZeros, chunk));
      n -= chunk;
    }
    return absl::OkStatus();
  }

  // Flushes to disk, closes and renames onto `dest`.
  absl::Status Commit(const std::string& dest) {
    if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot flush ", path_));
    }
    const int rc = std::fclose(f_);
    f_ = nullptr;
    if (rc != 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot close ", path_));
    if (std::rename(path_.c_str(), dest.c_str()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot rename ", path_, " to ", dest));
    }
    released_ = true;
    return absl::OkStatus();
  }

 private:
  std::string path_;
  std::FILE* f_;
  bool released_ = false;
};

}  // namespace

void GgufWriter::Set(const std::string& key, GgufValue value) {
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(key, std::move(value));
}

absl::Status GgufWriter::AddTensor(const std::string& name, std::vector<int64_t> shape,
                                   GgmlType type, FillFn fill) {
  auto error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF tensor '", name, "': ", what));
  };
  for (const Tensor& t : tensors_) {
    if (t.name == name) return error("duplicate tensor name");
  }
  if (shape.empty() || shape.size() > kMaxDims) {
    return error(absl::StrCat("has ", shape.size(), " dimensions; must be 1..", kMaxDims));
  }
  const GgmlTypeTraits& traits = TraitsOf(type);
  if (!traits.supported) {
    return error(absl::StrCat("type ", Sv(traits.name), " is not supported for writing"));
  }
  int64_t num_elements = 1;
  for (int64_t d : shape) {
    if (d < 1) return error(absl::StrCat("dimension ", d, " is not positive"));
    if (__builtin_mul_overflow(num_elements, d, &num_elements)) {
      return error("element count overflows int64");
    }
  }
  if (shape[0] % traits.block_size != 0) {
    return error(absl::StrCat("shape[0] = ", shape[0], " is not a multiple of ", Sv(traits.name),
                              "'s block size ", traits.block_size));
  }
  int64_t num_bytes = 0;
  if (__builtin_mul_overflow(num_elements / traits.block_size, traits.type_size, &num_bytes)) {
    return error("byte size overflows int64");
  }
  tensors_.push_back(
      Tensor{name, std::move(shape), type, static_cast<uint64_t>(num_bytes), std::move(fill)});
  return absl::OkStatus();
}

absl::Status GgufWriter::AddTensor(const std::string& name, std::vector<int64_t> shape,
                                   GgmlType type, std::vector<uint8_t> data) {
  // FillFn must be copyable, so the bytes are shared rather than moved into the lambda.
  auto bytes = std::make_shared<const std::vector<uint8_t>>(std::move(data));
  DUET_RETURN_IF_ERROR(
      AddTensor(name, std::move(shape), type, [bytes](absl::Span<uint8_t> out) -> absl::Status {
        std::memcpy(out.data(), bytes->data(), out.size());
        return absl::OkStatus();
      }));
  if (tensors_.back().num_bytes != bytes->size()) {
    const uint64_t expected = tensors_.back().num_bytes;
    tensors_.pop_back();
    return absl::InvalidArgumentError(absl::StrCat("GGUF tensor '", name, "': data has ",
                                                   bytes->size(), " bytes, expected ", expected));
  }
  return absl::OkStatus();
}

uint64_t GgufWriter::Alignment() const {
  for (const auto& [k, v] : metadata_) {
    if (k != kAlignmentKey) continue;
    const uint32_t* a = std::get_if<uint32_t>(&v.storage());
    if (a != nullptr && std::has_single_bit(*a)) return *a;
  }
  return kDefaultAlignment;
}

uint64_t GgufWriter::HeaderBytes() const {
  uint64_t n = 4 + 4 + 8 + 8;  // Magic, version, tensor count, metadata count.
  for (const auto& [k, v] : metadata_) n += 8 + k.size() + 4 + ValueBytes(v);
  for (const Tensor& t : tensors_) n += 8 + t.name.size() + 4 + 8 * t.shape.size() + 4 + 8;
  return n;
}

uint64_t GgufWriter::FileSize() const {
  const uint64_t alignment = Alignment();
  uint64_t n = AlignUp(HeaderBytes(), alignment);
  for (const Tensor& t : tensors_) n += AlignUp(t.num_bytes, alignment);
  return n;
}

absl::Status GgufWriter::Validate() const {
  for (const auto& [k, v] : metadata_) {
    if (k.empty()) return absl::InvalidArgumentError("GGUF metadata key is empty");
    if (k == kAlignmentKey) {
      const uint32_t* a = std::get_if<uint32_t>(&v.storage());
      if (a == nullptr || !std::has_single_bit(*a)) {
        return absl::InvalidArgumentError(
            absl::StrCat(kAlignmentKey, " must be a power-of-two uint32, got ",
                         Sv(GgufTypeName(v.type())), " ", v.DebugString()));
      }
    }
    DUET_RETURN_IF_ERROR(ValidateValue(v, 0, k));
  }
  return absl::OkStatus();
}

std::vector<uint8_t> GgufWriter::EncodeHeader() const {
  const uint64_t alignment = Alignment();
  std::vector<uint8_t> out;
  out.reserve(AlignUp(HeaderBytes(), alignment));
  out.insert(out.end(), {'G', 'G', 'U', 'F'});
  Put<uint32_t>(&out, kVersion);
  Put<uint64_t>(&out, tensors_.size());
  Put<uint64_t>(&out, metadata_.size());
  for (const auto& [k, v] : metadata_) {
    PutString(&out, k);
    Put<uint32_t>(&out, static_cast<uint32_t>(v.type()));
    EncodeValue(&out, v);
  }
  uint64_t offset = 0;  // Relative to the data section.
  for (const Tensor& t : tensors_) {
    PutString(&out, t.name);
    Put<uint32_t>(&out, static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) Put<uint64_t>(&out, static_cast<uint64_t>(d));
    Put<uint32_t>(&out, static_cast<uint32_t>(t.type));
    Put<uint64_t>(&out, offset);
    offset += AlignUp(t.num_bytes, alignment);
  }
  out.resize(AlignUp(out.size(), alignment), 0);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> GgufWriter::WriteToBuffer() const {
  DUET_RETURN_IF_ERROR(Validate());
  const uint64_t alignment = Alignment();
  std::vector<uint8_t> out = EncodeHeader();
  uint64_t offset = out.size();
  out.resize(FileSize(), 0);
  for (const Tensor& t : tensors_) {
    DUET_RETURN_IF_ERROR(t.fill(absl::Span<uint8_t>(out.data() + offset, t.num_bytes)));
    offset += AlignUp(t.num_bytes, alignment);
  }
  return out;
}

absl::Status GgufWriter::WriteFile(
    const std::string& path,
    const std::function<void(uint64_t done, uint64_t total)>& progress) const {
  DUET_RETURN_IF_ERROR(Validate());
  const uint64_t alignment = Alignment();
  const uint64_t total = FileSize();
  const std::string tmp_path = path + ".tmp";
  std::FILE* f = std::fopen(tmp_path.c_str(), "wb");
  if (f == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", tmp_path));
  TempFile tmp(tmp_path, f);

  const std::vector<uint8_t> header = EncodeHeader();
  DUET_RETURN_IF_ERROR(tmp.Write(header.data(), header.size()));
  uint64_t done = header.size();
  if (progress) progress(done, total);

  std::vector<uint8_t> buffer;
  for (const Tensor& t : tensors_) {
    buffer.assign(t.num_bytes, 0);
    DUET_RETURN_IF_ERROR(t.fill(absl::Span<uint8_t>(buffer.data(), buffer.size())));
    DUET_RETURN_IF_ERROR(tmp.Write(buffer.data(), buffer.size()));
    const uint64_t padding = AlignUp(t.num_bytes, alignment) - t.num_bytes;
    DUET_RETURN_IF_ERROR(tmp.WriteZeros(padding));
    done += t.num_bytes + padding;
    if (progress) progress(done, total);
  }
  return tmp.Commit(path);
}

}  // namespace duet
