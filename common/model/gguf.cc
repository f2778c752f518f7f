#include "common/model/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <type_traits>
#include <unordered_set>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/base/status.h"

namespace duet {
namespace {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes little-endian");

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;  // Nesting levels of arrays inside one metadata value.
// Items in one metadata array. Each item costs ~40 bytes in memory however small on disk, so a
// corrupt count that walks into tensor data must stop well before that adds up. The largest
// real vocabularies hold a few hundred thousand entries.
constexpr uint64_t kMaxArrayItems = uint64_t{1} << 24;
constexpr size_t kMaxNameInError = 64;  // Keys and tensor names are cut to this in messages.
constexpr int kMaxDims = 4;
constexpr size_t kDebugStringBytes = 256;  // Longer strings are cut in DebugString.
constexpr char kAlignmentKey[] = "general.alignment";

// Smallest encodings, used to bound counts by the bytes left before reserving anything.
// Metadata: key length, value type, a 1-byte value. Tensor info: name length, n_dims, one
// dimension, type, offset.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

// absl here has its own string_view; public names are std::string_view.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsKnownGgufType(uint32_t raw) { return raw <= static_cast<uint32_t>(GgufType::kFloat64); }

// Bytes the smallest value of `type` takes on disk (string: its length; array: type + count).
uint64_t MinValueBytes(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
    case GgufType::kString:
      return 8;
    case GgufType::kArray:
      return 12;
  }
  return 1;
}

// A key or tensor name escaped and shortened for an error message.
std::string Printable(absl::string_view name) {
  if (name.size() <= kMaxNameInError) return absl::CHexEscape(name);
  return absl::StrCat(absl::CHexEscape(name.substr(0, kMaxNameInError)), "...");
}

absl::Status Corrupt(uint64_t at, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("GGUF: ", what, " (at byte offset ", at, ")"));
}

// Bounds-checked cursor over the file's bytes. Every read names what it reads, so a failure
// says which field ran off the end and where.
class Reader {
 public:
  explicit Reader(absl::Span<const uint8_t> bytes) : bytes_(bytes) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  // `what` is `prefix` + `name`, joined only when building an error message, so hot loops
  // (vocabulary arrays) do not allocate a description per read.
  template <typename T>
  absl::StatusOr<T> Read(absl::string_view name, absl::string_view prefix = "") {
    static_assert(std::is_trivially_copyable_v<T>);
    if (remaining() < sizeof(T)) {
      return Corrupt(pos_, absl::StrCat("file truncated reading ", prefix, name, ": need ",
                                        sizeof(T), " bytes, ", remaining(), " left"));
    }
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<std::string> ReadString(absl::string_view what) {
    const uint64_t at = pos_;
    DUET_ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(what, "length of "));
    if (len > remaining()) {
      return Corrupt(at, absl::StrCat("length ", len, " of ", what, " exceeds the ", remaining(),
                                      " bytes left in the file"));
    }
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return s;
  }

  // Reads a value type id and checks it names a GGUF type.
  absl::StatusOr<GgufType> ReadType(absl::string_view what) {
    const uint64_t at = pos_;
    DUET_ASSIGN_OR_RETURN(uint32_t raw, Read<uint32_t>(what));
    if (!IsKnownGgufType(raw)) {
      return Corrupt(at, absl::StrCat("unknown metadata value type ", raw, " in ", what));
    }
    return static_cast<GgufType>(raw);
  }

  // Reads one value of `type`. `depth` counts the arrays enclosing it.
  absl::StatusOr<GgufValue> ReadValue(GgufType type, int depth, absl::string_view what) {
    switch (type) {
      case GgufType::kUint8:
        return Scalar<uint8_t>(what);
      case GgufType::kInt8:
        return Scalar<int8_t>(what);
      case GgufType::kUint16:
        return Scalar<uint16_t>(what);
      case GgufType::kInt16:
        return Scalar<int16_t>(what);
      case GgufType::kUint32:
        return Scalar<uint32_t>(what);
      case GgufType::kInt32:
        return Scalar<int32_t>(what);
      case GgufType::kFloat32:
        return Scalar<float>(what);
      case GgufType::kUint64:
        return Scalar<uint64_t>(what);
      case GgufType::kInt64:
        return Scalar<int64_t>(what);
      case GgufType::kFloat64:
        return Scalar<double>(what);
      case GgufType::kBool: {
        const uint64_t at = pos_;
        DUET_ASSIGN_OR_RETURN(uint8_t b, Read<uint8_t>(what));
        if (b > 1) return Corrupt(at, absl::StrCat("invalid bool value ", b, " in ", what));
        return GgufValue(b == 1);
      }
      case GgufType::kString: {
        DUET_ASSIGN_OR_RETURN(std::string s, ReadString(what));
        return GgufValue(std::move(s));
      }
      case GgufType::kArray:
        return ReadArray(depth, what);
    }
    return Corrupt(pos_, "unreachable value type");
  }

 private:
  template <typename T>
  absl::StatusOr<GgufValue> Scalar(absl::string_view what) {
    DUET_ASSIGN_OR_RETURN(T v, Read<T>(what));
    return GgufValue(v);
  }

  absl::StatusOr<GgufValue> ReadArray(int depth, absl::string_view what) {
    const uint64_t at = pos_;
    if (depth >= kMaxArrayDepth) {
      return Corrupt(
          at, absl::StrCat("arrays nested deeper than ", kMaxArrayDepth, " levels in ", what));
    }
    GgufArray array;
    DUET_ASSIGN_OR_RETURN(array.element_type,
                          ReadType(absl::StrCat("array element type of ", what)));
    const uint64_t count_at = pos_;
    DUET_ASSIGN_OR_RETURN(uint64_t count, Read<uint64_t>(what, "array count of "));
    if (count > kMaxArrayItems) {
      return Corrupt(count_at, absl::StrCat("array count ", count, " in ", what,
                                            " exceeds the limit of ", kMaxArrayItems, " items"));
    }
    const uint64_t min_bytes = MinValueBytes(array.element_type);
    if (count > remaining() / min_bytes) {
      return Corrupt(
          count_at,
          absl::StrCat("array count ", count, " of ", Sv(GgufTypeName(array.element_type)), " in ",
                       what, " needs more than the ", remaining(), " bytes left in the file"));
    }
    array.items.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      DUET_ASSIGN_OR_RETURN(GgufValue item, ReadValue(array.element_type, depth + 1, what));
      array.items.push_back(std::move(item));
    }
    return GgufValue(std::move(array));
  }

  absl::Span<const uint8_t> bytes_;
  uint64_t pos_ = 0;
};

// Rounds `v` up to a multiple of `alignment` (a power of two). REQUIRES: no overflow.
uint64_t AlignUp(uint64_t v, uint64_t alignment) { return (v + alignment - 1) & ~(alignment - 1); }

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

// Reads one tensor info (without its data range, which needs the data section's start).
absl::StatusOr<GgufTensorInfo> ReadTensorInfo(Reader& r, uint64_t index, uint64_t alignment) {
  GgufTensorInfo info;
  DUET_ASSIGN_OR_RETURN(info.name, r.ReadString(absl::StrCat("name of tensor ", index)));
  const std::string what = absl::StrCat("tensor '", Printable(info.name), "'");

  const uint64_t dims_at = r.pos();
  DUET_ASSIGN_OR_RETURN(uint32_t n_dims, r.Read<uint32_t>(what, "n_dims of "));
  if (n_dims < 1 || n_dims > kMaxDims) {
    return Corrupt(dims_at,
                   absl::StrCat(what, " has ", n_dims, " dimensions; must be 1..", kMaxDims));
  }
  int64_t num_elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t at = r.pos();
    DUET_ASSIGN_OR_RETURN(uint64_t dim,
                          r.Read<uint64_t>(absl::StrCat("dimension ", d, " of ", what)));
    if (dim < 1 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Corrupt(
          at, absl::StrCat("dimension ", d, " of ", what, " is ", dim, "; must be in [1, 2^63)"));
    }
    if (__builtin_mul_overflow(num_elements, static_cast<int64_t>(dim), &num_elements)) {
      return Corrupt(at, absl::StrCat("element count of ", what, " overflows int64"));
    }
    info.shape.push_back(static_cast<int64_t>(dim));
  }

  const uint64_t type_at = r.pos();
  DUET_ASSIGN_OR_RETURN(uint32_t raw_type, r.Read<uint32_t>(what, "type of "));
  absl::StatusOr<GgmlTypeTraits> traits = GetGgmlTypeTraits(raw_type);
  if (!traits.ok()) {
    return Corrupt(type_at, absl::StrCat(what, " has ", traits.status().message()));
  }
  info.type = traits->type;
  if (info.shape[0] % traits->block_size != 0) {
    return Corrupt(dims_at, absl::StrCat(what, " of type ", Sv(traits->name), " has shape ",
                                         ShapeString(info.shape), ": shape[0] is not a multiple ",
                                         "of the block size ", traits->block_size));
  }
  int64_t num_bytes = 0;
  if (__builtin_mul_overflow(num_elements / traits->block_size, traits->type_size, &num_bytes)) {
    return Corrupt(dims_at, absl::StrCat("byte size of ", what, " with shape ",
                                         ShapeString(info.shape), " overflows"));
  }
  info.num_bytes = static_cast<uint64_t>(num_bytes);

  const uint64_t offset_at = r.pos();
  DUET_ASSIGN_OR_RETURN(info.offset, r.Read<uint64_t>(what, "offset of "));
  if (info.offset % alignment != 0) {
    return Corrupt(offset_at, absl::StrCat(what, " has offset ", info.offset,
                                           ", not a multiple of the alignment ", alignment));
  }
  return info;
}

// Appends `s` quoted and escaped, cut to kDebugStringBytes on a UTF-8 boundary.
void AppendQuoted(std::string* out, absl::string_view s) {
  absl::string_view shown = s;
  if (shown.size() > kDebugStringBytes) {
    size_t cut = kDebugStringBytes;
    while (cut > 0 && (static_cast<uint8_t>(s[cut]) & 0xC0) == 0x80) --cut;
    shown = s.substr(0, cut);
  }
  absl::StrAppend(out, "\"", absl::Utf8SafeCHexEscape(shown), "\"");
  if (shown.size() < s.size()) absl::StrAppend(out, "... (", s.size(), " bytes)");
}

void AppendDebug(std::string* out, const GgufValue& v, size_t max_items) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, bool>) {
          out->append(x ? "true" : "false");
        } else if constexpr (std::is_same_v<T, std::string>) {
          AppendQuoted(out, x);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          out->append("[");
          const size_t shown = std::min(max_items, x.items.size());
          for (size_t i = 0; i < shown; ++i) {
            if (i > 0) out->append(", ");
            AppendDebug(out, x.items[i], max_items);
          }
          if (shown < x.items.size()) {
            absl::StrAppend(out, shown > 0 ? ", " : "", "... (", x.items.size(), " ",
                            Sv(GgufTypeName(x.element_type)), " items)");
          }
          out->append("]");
        } else if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, int8_t>) {
          absl::StrAppend(out, static_cast<int>(x));
        } else {
          absl::StrAppend(out, x);
        }
      },
      v.storage());
}

absl::Status KeyError(std::string_view key, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat("GGUF key '", Sv(key), "': ", s.message()));
}

}  // namespace

std::string_view GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
      return "uint8";
    case GgufType::kInt8:
      return "int8";
    case GgufType::kUint16:
      return "uint16";
    case GgufType::kInt16:
      return "int16";
    case GgufType::kUint32:
      return "uint32";
    case GgufType::kInt32:
      return "int32";
    case GgufType::kFloat32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "uint64";
    case GgufType::kInt64:
      return "int64";
    case GgufType::kFloat64:
      return "float64";
  }
  return "unknown";
}

// ---- GgufValue ----

absl::StatusOr<int64_t> GgufValue::AsInt() const {
  return std::visit(
      [&](const auto& x) -> absl::StatusOr<int64_t> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, uint64_t>) {
          if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            return absl::InvalidArgumentError(
                absl::StrCat("uint64 value ", x, " does not fit in int64"));
          }
          return static_cast<int64_t>(x);
        } else if constexpr (std::is_integral_v<T>) {  // Includes bool.
          return static_cast<int64_t>(x);
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("expected an integer, got ", Sv(GgufTypeName(type()))));
        }
      },
      storage_);
}

absl::StatusOr<uint64_t> GgufValue::AsUint() const {
  if (type() == GgufType::kUint64) return std::get<uint64_t>(storage_);
  DUET_ASSIGN_OR_RETURN(int64_t v, AsInt());
  if (v < 0) {
    return absl::InvalidArgumentError(absl::StrCat("expected a non-negative integer, got ", v));
  }
  return static_cast<uint64_t>(v);
}

absl::StatusOr<double> GgufValue::AsDouble() const {
  return std::visit(
      [&](const auto& x) -> absl::StatusOr<double> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_floating_point_v<T> ||
                      (std::is_integral_v<T> && !std::is_same_v<T, bool>)) {
          return static_cast<double>(x);
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("expected a number, got ", Sv(GgufTypeName(type()))));
        }
      },
      storage_);
}

absl::StatusOr<bool> GgufValue::AsBool() const {
  if (const bool* b = std::get_if<bool>(&storage_)) return *b;
  return absl::InvalidArgumentError(absl::StrCat("expected bool, got ", Sv(GgufTypeName(type()))));
}

absl::StatusOr<std::string_view> GgufValue::AsString() const {
  if (const std::string* s = std::get_if<std::string>(&storage_)) return std::string_view(*s);
  return absl::InvalidArgumentError(
      absl::StrCat("expected string, got ", Sv(GgufTypeName(type()))));
}

absl::StatusOr<const GgufArray*> GgufValue::AsArray() const {
  if (const GgufArray* a = std::get_if<GgufArray>(&storage_)) return a;
  return absl::InvalidArgumentError(absl::StrCat("expected array, got ", Sv(GgufTypeName(type()))));
}

std::string GgufValue::DebugString(size_t max_items) const {
  std::string out;
  AppendDebug(&out, *this, max_items);
  return out;
}

int64_t GgufTensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // The reader checked this cannot overflow.
  return n;
}

// ---- GgufFile ----

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  DUET_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path));
  absl::StatusOr<std::unique_ptr<GgufFile>> file = Parse(mapping->bytes());
  if (!file.ok()) {
    return absl::Status(file.status().code(), absl::StrCat(path, ": ", file.status().message()));
  }
  (*file)->mapping_ = std::move(mapping);
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(absl::Span<const uint8_t> bytes) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->bytes_ = bytes;
  Reader r(bytes);

  // Header.
  DUET_ASSIGN_OR_RETURN(uint32_t magic, r.Read<uint32_t>("magic"));
  if (std::memcmp(&magic, kMagic, sizeof(kMagic)) != 0) {
    return Corrupt(
        0,
        absl::StrCat("bad magic \"",
                     absl::CHexEscape(absl::string_view(reinterpret_cast<const char*>(&magic), 4)),
                     "\"; expected \"GGUF\""));
  }
  DUET_ASSIGN_OR_RETURN(file->version_, r.Read<uint32_t>("version"));
  if (file->version_ != 2 && file->version_ != 3) {
    std::string hint;
    if (file->version_ == 1) hint = " (GGUF v1 is obsolete; re-convert the model)";
    if ((file->version_ & 0xFFFF) == 0) hint = " (a big-endian file?)";
    return Corrupt(4, absl::StrCat("unsupported GGUF version ", file->version_,
                                   "; only versions 2 and 3 are supported", hint));
  }
  const uint64_t tensor_count_at = r.pos();
  DUET_ASSIGN_OR_RETURN(uint64_t tensor_count, r.Read<uint64_t>("tensor count"));
  const uint64_t kv_count_at = r.pos();
  DUET_ASSIGN_OR_RETURN(uint64_t kv_count, r.Read<uint64_t>("metadata count"));
  if (kv_count > r.remaining() / kMinKvBytes) {
    return Corrupt(kv_count_at, absl::StrCat("metadata count ", kv_count, " needs more than the ",
                                             r.remaining(), " bytes left in the file"));
  }

  // Metadata.
  file->metadata_.reserve(kv_count);
  std::unordered_set<std::string> keys;
  uint64_t alignment_at = 0;
  for (uint64_t i = 0; i < kv_count; ++i) {
    const uint64_t key_at = r.pos();
    DUET_ASSIGN_OR_RETURN(std::string key, r.ReadString(absl::StrCat("key of metadata entry ", i)));
    if (key.empty())
      return Corrupt(key_at, absl::StrCat("metadata entry ", i, " has an empty key"));
    if (!keys.insert(key).second) {
      return Corrupt(key_at, absl::StrCat("duplicate metadata key '", Printable(key), "'"));
    }
    const std::string what = absl::StrCat("metadata '", Printable(key), "'");
    DUET_ASSIGN_OR_RETURN(GgufType type, r.ReadType(absl::StrCat("value type of ", what)));
    if (key == kAlignmentKey) alignment_at = r.pos();
    DUET_ASSIGN_OR_RETURN(GgufValue value, r.ReadValue(type, 0, what));
    file->metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* a = file->Find(kAlignmentKey)) {
    if (a->type() != GgufType::kUint32) {
      return Corrupt(alignment_at, absl::StrCat(kAlignmentKey, " must be uint32, got ",
                                                Sv(GgufTypeName(a->type()))));
    }
    const uint32_t alignment = std::get<uint32_t>(a->storage());
    if (!std::has_single_bit(alignment)) {
      return Corrupt(alignment_at,
                     absl::StrCat(kAlignmentKey, " is ", alignment, "; must be a power of two"));
    }
    file->alignment_ = alignment;
  } else {
    file->alignment_ = kDefaultAlignment;
  }

  // Tensor infos.
  if (tensor_count > r.remaining() / kMinTensorInfoBytes) {
    return Corrupt(tensor_count_at,
                   absl::StrCat("tensor count ", tensor_count, " needs more than the ",
                                r.remaining(), " bytes left after the metadata"));
  }
  file->tensors_.reserve(tensor_count);
  std::vector<uint64_t> info_at;
  info_at.reserve(tensor_count);
  std::unordered_set<std::string> names;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    info_at.push_back(r.pos());
    DUET_ASSIGN_OR_RETURN(GgufTensorInfo info, ReadTensorInfo(r, i, file->alignment_));
    if (!names.insert(info.name).second) {
      return Corrupt(info_at.back(),
                     absl::StrCat("duplicate tensor name '", Printable(info.name), "'"));
    }
    file->tensors_.push_back(std::move(info));
  }

  // Data section. Without tensors, writers may omit the trailing padding, so the data offset
  // is clamped to the file size instead of rejected.
  const uint64_t size = bytes.size();
  file->data_offset_ = AlignUp(r.pos(), file->alignment_);  // pos <= size, alignment <= 2^31.
  if (file->data_offset_ > size) {
    if (!file->tensors_.empty()) {
      return Corrupt(r.pos(), absl::StrCat("data section would start at byte ", file->data_offset_,
                                           ", past the end of the file (", size, " bytes)"));
    }
    file->data_offset_ = size;
  }
  for (size_t i = 0; i < file->tensors_.size(); ++i) {
    GgufTensorInfo& t = file->tensors_[i];
    uint64_t begin = 0;
    uint64_t end = 0;
    if (__builtin_add_overflow(file->data_offset_, t.offset, &begin) ||
        __builtin_add_overflow(begin, t.num_bytes, &end) || end > size) {
      return Corrupt(
          info_at[i],
          absl::StrCat("data of tensor '", Printable(t.name), "' (offset ", t.offset, ", ",
                       t.num_bytes, " bytes after the data section at ", file->data_offset_,
                       ") extends past the end of the file (", size, " bytes)"));
    }
    t.data = bytes.data() + begin;
  }
  return file;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  for (const auto& [k, v] : metadata_) {
    if (k == key) return &v;
  }
  return nullptr;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  for (const GgufTensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {

absl::StatusOr<const GgufValue*> Lookup(const GgufFile& file, std::string_view key) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF key '", Sv(key), "' not found"));
  return v;
}

// Applies `as` (a GgufValue accessor) to `key`'s value, naming the key in errors.
template <typename T, typename Fn>
absl::StatusOr<T> Get(const GgufFile& file, std::string_view key, Fn as) {
  DUET_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(file, key));
  absl::StatusOr<T> r = as(*v);
  if (!r.ok()) return KeyError(key, r.status());
  return r;
}

// Converts every item of `key`'s array with `as`, naming the key and index in errors.
template <typename T, typename Fn>
absl::StatusOr<std::vector<T>> GetArray(const GgufFile& file, std::string_view key, Fn as) {
  DUET_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(file, key));
  absl::StatusOr<const GgufArray*> array = v->AsArray();
  if (!array.ok()) return KeyError(key, array.status());
  std::vector<T> out;
  out.reserve((*array)->items.size());
  for (size_t i = 0; i < (*array)->items.size(); ++i) {
    auto item = as((*array)->items[i]);
    if (!item.ok()) {
      return KeyError(key, absl::Status(item.status().code(),
                                        absl::StrCat("item ", i, ": ", item.status().message())));
    }
    out.emplace_back(*item);
  }
  return out;
}

}  // namespace

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  return Get<int64_t>(*this, key, [](const GgufValue& v) { return v.AsInt(); });
}

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  return Get<uint64_t>(*this, key, [](const GgufValue& v) { return v.AsUint(); });
}

absl::StatusOr<double> GgufFile::GetDouble(std::string_view key) const {
  return Get<double>(*this, key, [](const GgufValue& v) { return v.AsDouble(); });
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  return Get<bool>(*this, key, [](const GgufValue& v) { return v.AsBool(); });
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  return Get<std::string>(*this, key, [](const GgufValue& v) -> absl::StatusOr<std::string> {
    DUET_ASSIGN_OR_RETURN(std::string_view s, v.AsString());
    return std::string(s);
  });
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  return GetArray<std::string>(*this, key, [](const GgufValue& v) { return v.AsString(); });
}

absl::StatusOr<std::vector<double>> GgufFile::GetDoubleArray(std::string_view key) const {
  return GetArray<double>(*this, key, [](const GgufValue& v) { return v.AsDouble(); });
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  return GetArray<int64_t>(*this, key, [](const GgufValue& v) { return v.AsInt(); });
}

}  // namespace duet
