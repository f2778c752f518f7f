#include "common/model/gguf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "common/model/gguf_writer.h"

namespace duet {
namespace {

using ::testing::HasSubstr;

// Appends little-endian GGUF fields, so tests can lay out files the writer would refuse.
class Builder {
 public:
  Builder& U8(uint8_t v) { return Raw(&v, 1); }
  Builder& U32(uint32_t v) { return Raw(&v, 4); }
  Builder& U64(uint64_t v) { return Raw(&v, 8); }
  Builder& Str(std::string_view s) {
    U64(s.size());
    return Raw(s.data(), s.size());
  }
  Builder& Header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
    Raw("GGUF", 4);
    U32(version);
    U64(tensors);
    return U64(kvs);
  }
  // A metadata key and its value type; the caller appends the value.
  Builder& Key(std::string_view key, GgufType type) {
    Str(key);
    return U32(static_cast<uint32_t>(type));
  }
  Builder& TensorInfo(std::string_view name, const std::vector<uint64_t>& dims, uint32_t type,
                      uint64_t offset) {
    Str(name);
    U32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) U64(d);
    U32(type);
    return U64(offset);
  }
  Builder& PadTo(size_t alignment) {
    while (bytes.size() % alignment != 0) bytes.push_back(0);
    return *this;
  }
  Builder& Zeros(size_t n) {
    bytes.resize(bytes.size() + n, 0);
    return *this;
  }
  Builder& Raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    bytes.insert(bytes.end(), b, b + n);
    return *this;
  }

  std::vector<uint8_t> bytes;
};

// Parses `bytes` and expects INVALID_ARGUMENT whose message contains every `parts`.
void ExpectInvalid(const std::vector<uint8_t>& bytes, std::vector<std::string> parts) {
  auto file = GgufFile::Parse(bytes);
  ASSERT_FALSE(file.ok()) << "parsed a corrupt file";
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  for (const std::string& part : parts) {
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(part));
  }
}

// A single-tensor file: header, one tensor info, padding, `data_bytes` of data.
std::vector<uint8_t> OneTensor(const std::vector<uint64_t>& dims, uint32_t type, uint64_t offset,
                               size_t data_bytes, std::string_view name = "t") {
  Builder b;
  b.Header(1, 0).TensorInfo(name, dims, type, offset).PadTo(32).Zeros(data_bytes);
  return b.bytes;
}

std::vector<uint8_t> ValidFile() {
  GgufWriter w;
  w.Set("general.architecture", GgufValue("llama"));
  w.Set("llama.block_count", GgufValue(uint32_t{2}));
  w.Set("tokenizer.ggml.tokens",
        GgufValue(GgufArray{GgufType::kString, {GgufValue("a"), GgufValue("bc")}}));
  EXPECT_TRUE(w.AddTensor("a", {4, 2}, GgmlType::kF32, std::vector<uint8_t>(32, 1)).ok());
  EXPECT_TRUE(w.AddTensor("b", {32}, GgmlType::kQ8_0, std::vector<uint8_t>(34, 2)).ok());
  EXPECT_TRUE(w.AddTensor("c", {3}, GgmlType::kF16, std::vector<uint8_t>(6, 3)).ok());
  auto bytes = w.WriteToBuffer();
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return *bytes;
}

TEST(GgufReaderTest, ParsesWriterOutput) {
  const std::vector<uint8_t> bytes = ValidFile();
  auto file = GgufFile::Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.file_size(), bytes.size());
  EXPECT_EQ(f.data_offset() % 32, 0u);
  ASSERT_EQ(f.metadata().size(), 3u);
  EXPECT_EQ(f.metadata()[0].first, "general.architecture");
  ASSERT_EQ(f.tensors().size(), 3u);
  const GgufTensorInfo* b = f.FindTensor("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->type, GgmlType::kQ8_0);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{32}));
  EXPECT_EQ(b->num_elements(), 32);
  EXPECT_EQ(b->num_bytes, 34u);
  EXPECT_EQ(b->offset, 32u);  // "a" takes 32 bytes, already aligned.
  EXPECT_EQ(b->data, bytes.data() + f.data_offset() + 32);
  EXPECT_EQ(b->data[0], 2);
  EXPECT_EQ(f.FindTensor("c")->offset, 96u);  // 34 bytes padded to 64.
  EXPECT_EQ(f.FindTensor("a")->num_elements(), 8);
  EXPECT_EQ(f.FindTensor("zz"), nullptr);
}

TEST(GgufReaderTest, TypedAccessors) {
  GgufWriter w;
  w.Set("u32", GgufValue(uint32_t{7}));
  w.Set("i8", GgufValue(int8_t{-3}));
  w.Set("u64_big", GgufValue(uint64_t{1} << 63));
  w.Set("f32", GgufValue(0.5f));
  w.Set("flag", GgufValue(true));
  w.Set("name", GgufValue("tiny"));
  w.Set("strs", GgufValue(GgufArray{GgufType::kString, {GgufValue("x"), GgufValue("y")}}));
  w.Set("ints", GgufValue(GgufArray{GgufType::kInt32, {GgufValue(1), GgufValue(-2)}}));
  w.Set("floats", GgufValue(GgufArray{GgufType::kFloat32, {GgufValue(1.5f), GgufValue(2.0f)}}));
  auto bytes = w.WriteToBuffer();
  ASSERT_TRUE(bytes.ok());
  auto file = GgufFile::Parse(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;

  EXPECT_EQ(*f.GetInt("u32"), 7);
  EXPECT_EQ(*f.GetUint("u32"), 7u);
  EXPECT_EQ(*f.GetDouble("u32"), 7.0);
  EXPECT_EQ(*f.GetInt("i8"), -3);
  EXPECT_EQ(*f.GetUint("u64_big"), uint64_t{1} << 63);
  EXPECT_EQ(*f.GetDouble("f32"), 0.5);
  EXPECT_EQ(*f.GetBool("flag"), true);
  EXPECT_EQ(*f.GetInt("flag"), 1);  // AsInt accepts bool.
  EXPECT_EQ(*f.GetString("name"), "tiny");
  EXPECT_EQ(*f.GetStringArray("strs"), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(*f.GetIntArray("ints"), (std::vector<int64_t>{1, -2}));
  EXPECT_EQ(*f.GetDoubleArray("ints"), (std::vector<double>{1, -2}));
  EXPECT_EQ(*f.GetDoubleArray("floats"), (std::vector<double>{1.5, 2.0}));

  auto missing = f.GetInt("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("nope"));
  struct Mismatch {
    absl::Status status;
    std::string key;
  };
  const Mismatch mismatches[] = {
      {f.GetUint("i8").status(), "i8"},           // Negative.
      {f.GetInt("u64_big").status(), "u64_big"},  // Does not fit int64.
      {f.GetInt("f32").status(), "f32"},
      {f.GetDouble("flag").status(), "flag"},
      {f.GetBool("u32").status(), "u32"},
      {f.GetString("u32").status(), "u32"},
      {f.GetStringArray("ints").status(), "ints"},
      {f.GetIntArray("floats").status(), "floats"},
      {f.GetIntArray("name").status(), "name"},
  };
  for (const Mismatch& m : mismatches) {
    EXPECT_EQ(m.status.code(), absl::StatusCode::kInvalidArgument) << m.key;
    EXPECT_THAT(std::string(m.status.message()), HasSubstr("'" + m.key + "'"));
  }
}

TEST(GgufReaderTest, DebugString) {
  EXPECT_EQ(GgufValue(uint8_t{7}).DebugString(), "7");
  EXPECT_EQ(GgufValue(int8_t{-7}).DebugString(), "-7");
  EXPECT_EQ(GgufValue(true).DebugString(), "true");
  EXPECT_EQ(GgufValue(1.5).DebugString(), "1.5");
  EXPECT_EQ(GgufValue("a\"b\n").DebugString(), "\"a\\\"b\\n\"");
  EXPECT_EQ(GgufValue(std::string(300, 'x')).DebugString(),
            "\"" + std::string(256, 'x') + "\"... (300 bytes)");
  GgufArray a{GgufType::kUint32, {}};
  for (uint32_t i = 0; i < 10; ++i) a.items.emplace_back(i);
  EXPECT_EQ(GgufValue(a).DebugString(3), "[0, 1, 2, ... (10 uint32 items)]");
  EXPECT_EQ(GgufValue(a).DebugString(10), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]");
  GgufArray nested{GgufType::kArray,
                   {GgufValue(GgufArray{GgufType::kInt8, {GgufValue(int8_t{1})}})}};
  EXPECT_EQ(GgufValue(nested).DebugString(), "[[1]]");
  EXPECT_EQ(GgufValue(GgufArray{GgufType::kString, {}}).DebugString(), "[]");
}

TEST(GgufReaderTest, AcceptsVersion2) {
  std::vector<uint8_t> bytes = ValidFile();
  bytes[4] = 2;
  auto file = GgufFile::Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->version(), 2u);
}

TEST(GgufReaderTest, ParsesKnownUnsupportedTensorTypes) {
  // Q4_K (id 12): 256 elements per 144-byte block; IQ2_XXS (16): 66 bytes per 256.
  Builder b;
  b.Header(2, 0).TensorInfo("k", {256, 2}, 12, 0).TensorInfo("iq", {256}, 16, 288).PadTo(32);
  b.Zeros(288 + 32 + 66);
  auto file = GgufFile::Parse(b.bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufTensorInfo& k = (*file)->tensors()[0];
  EXPECT_EQ(k.type, GgmlType::kQ4_K);
  EXPECT_EQ(k.num_bytes, 288u);
  EXPECT_FALSE(TraitsOf(k.type).supported);
  EXPECT_EQ((*file)->tensors()[1].type, GgmlType::kIQ2_XXS);
}

TEST(GgufReaderTest, MetadataOnlyFileWithoutTrailingPadding) {
  Builder b;
  b.Header(0, 1).Key("k", GgufType::kUint8).U8(1);  // 38 bytes, no padding.
  auto file = GgufFile::Parse(b.bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->data_offset(), b.bytes.size());
}

TEST(GgufReaderTest, NestedArraysUpToTheLimit) {
  // Eight levels of arrays, innermost holding one uint8.
  Builder b;
  b.Header(0, 1).Key("deep", GgufType::kArray);
  for (int i = 0; i < 7; ++i) b.U32(static_cast<uint32_t>(GgufType::kArray)).U64(1);
  b.U32(static_cast<uint32_t>(GgufType::kUint8)).U64(1).U8(42);
  auto file = GgufFile::Parse(b.bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("deep")->DebugString(), "[[[[[[[[42]]]]]]]]");
}

// ---- Corruption: one case per error class. ----

TEST(GgufCorruptTest, Empty) { ExpectInvalid({}, {"truncated reading magic", "byte offset 0"}); }

TEST(GgufCorruptTest, BadMagic) {
  Builder b;
  b.Raw("GGML", 4).U32(3).U64(0).U64(0);
  ExpectInvalid(b.bytes, {"bad magic \"GGML\"", "byte offset 0"});
}

TEST(GgufCorruptTest, UnsupportedVersions) {
  ExpectInvalid(Builder().Header(0, 0, 1).bytes, {"version 1", "byte offset 4"});
  ExpectInvalid(Builder().Header(0, 0, 4).bytes, {"version 4"});
  ExpectInvalid(Builder().Header(0, 0, 0).bytes, {"version 0"});
  ExpectInvalid(Builder().Header(0, 0, 0x03000000).bytes, {"version 50331648", "big-endian"});
}

TEST(GgufCorruptTest, TruncatedHeader) {
  Builder b;
  b.Raw("GGUF", 4).U32(3).U32(0);  // Tensor count cut after 4 of 8 bytes.
  ExpectInvalid(b.bytes, {"truncated reading tensor count", "byte offset 8"});
}

TEST(GgufCorruptTest, MetadataCountExceedsFile) {
  ExpectInvalid(Builder().Header(0, 1000000).bytes, {"metadata count 1000000", "byte offset 16"});
  ExpectInvalid(Builder().Header(0, ~uint64_t{0}).bytes, {"metadata count 18446744073709551615"});
}

TEST(GgufCorruptTest, TensorCountExceedsFile) {
  ExpectInvalid(Builder().Header(1000000, 0).bytes, {"tensor count 1000000", "byte offset 8"});
  ExpectInvalid(Builder().Header(~uint64_t{0}, 0).bytes, {"tensor count"});
}

TEST(GgufCorruptTest, StringPastEnd) {
  Builder b;
  b.Header(0, 1).U64(100).Raw("ab", 2).Zeros(20);
  ExpectInvalid(b.bytes, {"length 100 of key of metadata entry 0", "byte offset 24"});
  Builder huge;
  huge.Header(0, 1).U64(~uint64_t{0}).Zeros(20);
  ExpectInvalid(huge.bytes, {"length 18446744073709551615"});
}

TEST(GgufCorruptTest, UnknownValueType) {
  Builder b;
  b.Header(0, 1).Str("k").U32(13).U32(0);
  ExpectInvalid(b.bytes, {"unknown metadata value type 13", "'k'", "byte offset 33"});
}

TEST(GgufCorruptTest, UnknownArrayElementType) {
  Builder b;
  b.Header(0, 1).Key("k", GgufType::kArray).U32(42).U64(0);
  ExpectInvalid(b.bytes, {"unknown metadata value type 42", "byte offset 37"});
}

TEST(GgufCorruptTest, ArrayCountExceedsFile) {
  // 1000 uint32 need 4000 bytes; 16 remain.
  Builder b;
  b.Header(0, 1).Key("k", GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kUint32));
  b.U64(1000).Zeros(16);
  ExpectInvalid(b.bytes, {"array count 1000 of uint32", "16 bytes left", "byte offset 41"});
  // Strings need at least their 8-byte length each.
  Builder c;
  c.Header(0, 1).Key("k", GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kString));
  c.U64(3).U64(0).U64(0);
  ExpectInvalid(c.bytes, {"array count 3 of string"});
}

TEST(GgufCorruptTest, ArrayCountOverLimit) {
  Builder b;
  b.Header(0, 1).Key("k", GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kUint8));
  b.U64((uint64_t{1} << 24) + 1).Zeros(64);
  ExpectInvalid(b.bytes, {"array count 16777217", "limit of 16777216 items", "byte offset 41"});
}

TEST(GgufCorruptTest, LongNamesAreCutInMessages) {
  const std::string name(5000, 'n');
  auto file = GgufFile::Parse(OneTensor({}, 0, 0, 0, name));
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(std::string(64, 'n') + "..."));
  EXPECT_LT(file.status().message().size(), 300u);
}

TEST(GgufCorruptTest, ArraysNestedTooDeep) {
  Builder b;
  b.Header(0, 1).Key("deep", GgufType::kArray);
  for (int i = 0; i < 8; ++i) b.U32(static_cast<uint32_t>(GgufType::kArray)).U64(1);
  b.U32(static_cast<uint32_t>(GgufType::kUint8)).U64(1).U8(42);
  ExpectInvalid(b.bytes, {"nested deeper than 8", "'deep'"});
}

TEST(GgufCorruptTest, InvalidBool) {
  Builder b;
  b.Header(0, 1).Key("flag", GgufType::kBool).U8(2);
  ExpectInvalid(b.bytes, {"invalid bool value 2", "byte offset 40"});
}

TEST(GgufCorruptTest, TruncatedValue) {
  Builder b;
  b.Header(0, 1).Key("k", GgufType::kUint32).U8(1).U8(2);
  ExpectInvalid(b.bytes, {"truncated reading metadata 'k'", "need 4 bytes, 2 left"});
}

TEST(GgufCorruptTest, EmptyAndDuplicateKeys) {
  Builder empty;
  empty.Header(0, 1).Key("", GgufType::kUint8).U8(0);
  ExpectInvalid(empty.bytes, {"empty key"});
  Builder dup;
  dup.Header(0, 2).Key("k", GgufType::kUint8).U8(0).Key("k", GgufType::kUint8).U8(1);
  ExpectInvalid(dup.bytes, {"duplicate metadata key 'k'", "byte offset 38"});
}

TEST(GgufCorruptTest, BadAlignment) {
  Builder wrong_type;
  wrong_type.Header(0, 1).Key("general.alignment", GgufType::kUint64).U64(64);
  ExpectInvalid(wrong_type.bytes, {"general.alignment must be uint32, got uint64"});
  Builder not_pow2;
  not_pow2.Header(0, 1).Key("general.alignment", GgufType::kUint32).U32(48);
  ExpectInvalid(not_pow2.bytes, {"general.alignment is 48", "power of two", "byte offset 53"});
  Builder zero;
  zero.Header(0, 1).Key("general.alignment", GgufType::kUint32).U32(0);
  ExpectInvalid(zero.bytes, {"general.alignment is 0"});
}

TEST(GgufCorruptTest, BadDimensionCount) {
  ExpectInvalid(OneTensor({}, 0, 0, 0), {"tensor 't' has 0 dimensions", "byte offset 33"});
  ExpectInvalid(OneTensor({1, 1, 1, 1, 1}, 0, 0, 4), {"has 5 dimensions"});
}

TEST(GgufCorruptTest, BadDimension) {
  ExpectInvalid(OneTensor({4, 0}, 0, 0, 0), {"dimension 1 of tensor 't' is 0", "byte offset 45"});
  ExpectInvalid(OneTensor({uint64_t{1} << 63}, 0, 0, 0),
                {"dimension 0 of tensor 't' is 9223372036854775808"});
}

TEST(GgufCorruptTest, ElementCountOverflow) {
  ExpectInvalid(OneTensor({uint64_t{1} << 32, uint64_t{1} << 32}, 0, 0, 0),
                {"element count of tensor 't' overflows"});
}

TEST(GgufCorruptTest, ByteSizeOverflow) {
  // 2^62 f32 elements fit int64, but 2^64 bytes do not.
  ExpectInvalid(OneTensor({uint64_t{1} << 31, uint64_t{1} << 31}, 0, 0, 0),
                {"byte size of tensor 't'", "overflows"});
}

TEST(GgufCorruptTest, RowNotMultipleOfBlock) {
  ExpectInvalid(OneTensor({31}, 8, 0, 34), {"type q8_0", "[31]", "block size 32"});
}

TEST(GgufCorruptTest, UnknownTensorType) {
  ExpectInvalid(OneTensor({4}, 99, 0, 16),
                {"unknown GGML type id 99", "tensor 't'", "byte offset 45"});
}

TEST(GgufCorruptTest, MisalignedOffset) {
  ExpectInvalid(OneTensor({4}, 0, 16, 64), {"offset 16", "alignment 32", "byte offset 49"});
}

TEST(GgufCorruptTest, DataPastEndOfFile) {
  ExpectInvalid(OneTensor({4}, 0, 0, 15),
                {"data of tensor 't'", "past the end of the file", "byte offset 24"});
  ExpectInvalid(OneTensor({4}, 0, 32, 32), {"past the end"});
  // An offset that would wrap around 2^64 when added to the data section's start.
  ExpectInvalid(OneTensor({4}, 0, ~uint64_t{0} - 31, 16), {"past the end"});
}

TEST(GgufCorruptTest, DataSectionPastEndOfFile) {
  Builder b;
  b.Header(1, 0).TensorInfo("t", {4}, 0, 0);  // 57 bytes; data would start at 64.
  ExpectInvalid(b.bytes, {"data section would start at byte 64", "byte offset 57"});
}

TEST(GgufCorruptTest, DuplicateTensorName) {
  Builder b;
  b.Header(2, 0).TensorInfo("t", {4}, 0, 0).TensorInfo("t", {4}, 0, 32).PadTo(32).Zeros(64);
  ExpectInvalid(b.bytes, {"duplicate tensor name 't'", "byte offset 57"});
}

TEST(GgufCorruptTest, EveryStrictPrefixIsRejected) {
  const std::vector<uint8_t> bytes = ValidFile();
  auto whole = GgufFile::Parse(bytes);
  ASSERT_TRUE(whole.ok());
  const GgufTensorInfo& last = (*whole)->tensors().back();
  const size_t data_end = static_cast<size_t>(last.data + last.num_bytes - bytes.data());
  ASSERT_LT(data_end, bytes.size());  // The file ends with the last tensor's padding.
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A fresh allocation of exactly n bytes, so ASan flags any read past the prefix.
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + n);
    auto file = GgufFile::Parse(prefix);
    if (n < data_end) {
      ASSERT_FALSE(file.ok()) << "prefix of " << n << " bytes parsed";
      ASSERT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << n;
    } else {
      // Only the padding after the last tensor is missing. Like llama.cpp, which checks each
      // tensor's range, the reader accepts that: no byte any tensor owns is lost.
      ASSERT_TRUE(file.ok()) << n << ": " << file.status();
    }
  }
}

TEST(GgufCorruptTest, SingleByteFlipsNeverCrash) {
  const std::vector<uint8_t> bytes = ValidFile();
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (uint8_t flip : {0x01, 0x80, 0xFF}) {
      std::vector<uint8_t> copy = bytes;
      copy[i] ^= flip;
      auto file = GgufFile::Parse(copy);
      if (!file.ok()) {
        EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
        continue;
      }
      for (const GgufTensorInfo& t : (*file)->tensors()) {
        ASSERT_GE(t.data, copy.data());
        ASSERT_LE(t.data + t.num_bytes, copy.data() + copy.size());
      }
    }
  }
}

// ---- Files on disk. ----

TEST(GgufFileTest, OpenMapsAndNamesPathInErrors) {
  const std::string dir = ::testing::TempDir();
  const std::string good = dir + "/duet_gguf_open_" + std::to_string(::getpid());
  const std::vector<uint8_t> bytes = ValidFile();
  {
    std::ofstream out(good, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  auto file = GgufFile::Open(good);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->FindTensor("b")->data[0], 2);
  EXPECT_EQ(*(*file)->GetString("general.architecture"), "llama");

  const std::string bad = good + ".bad";
  {
    std::ofstream out(bad, std::ios::binary);
    out.write("GGUF\x01\0\0\0", 8);
  }
  auto corrupt = GgufFile::Open(bad);
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(corrupt.status().message()), HasSubstr(bad));
  EXPECT_THAT(std::string(corrupt.status().message()), HasSubstr("version 1"));

  auto missing = GgufFile::Open(good + ".missing");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(".missing"));
  std::remove(good.c_str());
  std::remove(bad.c_str());
}

TEST(GgufFileTest, ParsesSharedModelFiles) {
  const std::filesystem::path shared(DUET_SHARED_DIR);
  std::vector<std::filesystem::path> paths;
  for (const char* sub : {"models", "tokenizer"}) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(shared / sub, ec)) {
      if (e.path().extension() == ".gguf") paths.push_back(e.path());
    }
  }
  if (paths.empty()) GTEST_SKIP() << "no .gguf files under " << shared;
  for (const auto& path : paths) {
    auto file = GgufFile::Open(path.string());
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_TRUE((*file)->Find("general.architecture") != nullptr) << path;
  }
}

}  // namespace
}  // namespace duet
