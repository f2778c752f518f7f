#include "common/model/gguf_writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "common/model/gguf.h"
#include "common/model/quant.h"

namespace duet {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::vector<uint8_t> FloatBytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// Deep equality; floats compare by bits so NaN round trips are checked too.
bool SameValue(const GgufValue& a, const GgufValue& b) {
  if (a.type() != b.type()) return false;
  return std::visit(
      [&](const auto& x) -> bool {
        using T = std::decay_t<decltype(x)>;
        const T& y = std::get<T>(b.storage());
        if constexpr (std::is_same_v<T, GgufArray>) {
          if (x.element_type != y.element_type || x.items.size() != y.items.size()) return false;
          for (size_t i = 0; i < x.items.size(); ++i) {
            if (!SameValue(x.items[i], y.items[i])) return false;
          }
          return true;
        } else if constexpr (std::is_floating_point_v<T>) {
          return std::memcmp(&x, &y, sizeof(T)) == 0;
        } else {
          return x == y;
        }
      },
      a.storage());
}

GgufValue Array(GgufType type, std::vector<GgufValue> items) {
  return GgufValue(GgufArray{type, std::move(items)});
}

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + name + "." + std::to_string(::getpid());
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

TEST(GgufWriterTest, ExactBytesOfASmallFile) {
  GgufWriter w;
  w.Set("a", GgufValue(uint32_t{7}));
  ASSERT_TRUE(w.AddTensor("t", {2}, GgmlType::kF32, FloatBytes({1.0f, 2.0f})).ok());
  // clang-format off
  const std::vector<uint8_t> expected = {
      // 0: magic "GGUF", version 3.
      'G', 'G', 'U', 'F', 0x03, 0x00, 0x00, 0x00,
      // 8: tensor count 1, 16: metadata count 1 (u64 each).
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      // 24: key "a" (u64 length 1, then the byte), 33: value type 4 (uint32), 37: value 7.
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 'a',
      0x04, 0x00, 0x00, 0x00,
      0x07, 0x00, 0x00, 0x00,
      // 41: tensor name "t", 50: n_dims 1, 54: ne[0] = 2, 62: type 0 (f32), 66: offset 0.
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 't',
      0x01, 0x00, 0x00, 0x00,
      0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      // 74: 22 zero bytes pad the header to the 32-byte alignment.
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      // 96: data 1.0f, 2.0f.
      0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0x40,
      // 104: 24 zero bytes pad the tensor to the alignment (as ggml's writer does).
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  // clang-format on
  ASSERT_EQ(expected.size(), 128u);
  EXPECT_EQ(w.FileSize(), 128u);
  auto bytes = w.WriteToBuffer();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_THAT(*bytes, ElementsAreArray(expected));
}

TEST(GgufWriterTest, ExactBytesWithoutTensors) {
  GgufWriter w;
  w.Set("general.alignment", GgufValue(uint32_t{8}));
  // clang-format off
  const std::vector<uint8_t> expected = {
      'G', 'G', 'U', 'F', 3, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 0,      // No tensors.
      1, 0, 0, 0, 0, 0, 0, 0,      // One key.
      17, 0, 0, 0, 0, 0, 0, 0,     // strlen("general.alignment").
      'g', 'e', 'n', 'e', 'r', 'a', 'l', '.', 'a', 'l', 'i', 'g', 'n', 'm', 'e', 'n', 't',
      4, 0, 0, 0, 8, 0, 0, 0,      // uint32 8; 57 bytes so far.
      0, 0, 0, 0, 0, 0, 0};        // Padding to 64.
  // clang-format on
  auto bytes = w.WriteToBuffer();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_THAT(*bytes, ElementsAreArray(expected));
}

TEST(GgufWriterTest, EveryValueTypeRoundTrips) {
  const float nan = std::bit_cast<float>(0x7FC01234u);
  std::vector<std::pair<std::string, GgufValue>> values = {
      {"u8", GgufValue(uint8_t{255})},
      {"i8", GgufValue(int8_t{-128})},
      {"u16", GgufValue(uint16_t{65535})},
      {"i16", GgufValue(int16_t{-32768})},
      {"u32", GgufValue(uint32_t{0xFFFFFFFF})},
      {"i32", GgufValue(std::numeric_limits<int32_t>::min())},
      {"f32", GgufValue(-1.25f)},
      {"f32_nan", GgufValue(nan)},
      {"f32_inf", GgufValue(std::numeric_limits<float>::infinity())},
      {"bool_t", GgufValue(true)},
      {"bool_f", GgufValue(false)},
      {"str", GgufValue(std::string("h\xC3\xA9llo\0x", 8))},
      {"str_empty", GgufValue(std::string())},
      {"u64", GgufValue(std::numeric_limits<uint64_t>::max())},
      {"i64", GgufValue(std::numeric_limits<int64_t>::min())},
      {"f64", GgufValue(3.141592653589793)},
      {"arr_u8", Array(GgufType::kUint8, {GgufValue(uint8_t{1}), GgufValue(uint8_t{2})})},
      {"arr_i8", Array(GgufType::kInt8, {GgufValue(int8_t{-1})})},
      {"arr_u16", Array(GgufType::kUint16, {GgufValue(uint16_t{3})})},
      {"arr_i16", Array(GgufType::kInt16, {GgufValue(int16_t{-3})})},
      {"arr_u32", Array(GgufType::kUint32, {GgufValue(uint32_t{4}), GgufValue(uint32_t{5})})},
      {"arr_i32", Array(GgufType::kInt32, {GgufValue(-4), GgufValue(5)})},
      {"arr_f32", Array(GgufType::kFloat32, {GgufValue(0.5f), GgufValue(nan)})},
      {"arr_bool", Array(GgufType::kBool, {GgufValue(true), GgufValue(false)})},
      {"arr_str", Array(GgufType::kString, {GgufValue("a"), GgufValue(""), GgufValue("ccc")})},
      {"arr_u64", Array(GgufType::kUint64, {GgufValue(uint64_t{1} << 40)})},
      {"arr_i64", Array(GgufType::kInt64, {GgufValue(int64_t{-1} << 40)})},
      {"arr_f64", Array(GgufType::kFloat64, {GgufValue(1e300), GgufValue(-0.0)})},
      {"arr_empty", Array(GgufType::kString, {})},
      {"arr_nested",
       Array(GgufType::kArray,
             {Array(GgufType::kInt16, {GgufValue(int16_t{1}), GgufValue(int16_t{2})}),
              Array(GgufType::kString, {GgufValue("x")}), Array(GgufType::kUint8, {}),
              Array(GgufType::kArray, {Array(GgufType::kFloat64, {GgufValue(2.5)})})})},
  };
  // Eight levels, the most the reader accepts.
  GgufValue deep = Array(GgufType::kBool, {GgufValue(true)});
  for (int i = 0; i < 7; ++i) deep = Array(GgufType::kArray, {deep});
  values.emplace_back("deep", deep);

  GgufWriter w;
  for (const auto& [k, v] : values) w.Set(k, v);
  auto bytes = w.WriteToBuffer();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(bytes->size(), w.FileSize());
  auto file = GgufFile::Parse(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->metadata().size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const auto& [key, value] = (*file)->metadata()[i];
    EXPECT_EQ(key, values[i].first);  // Insertion order.
    EXPECT_TRUE(SameValue(value, values[i].second))
        << key << ": " << value.DebugString() << " vs " << values[i].second.DebugString();
  }
}

TEST(GgufWriterTest, SetReplacesInPlace) {
  GgufWriter w;
  w.Set("a", GgufValue(uint32_t{1}));
  w.Set("b", GgufValue("x"));
  w.Set("a", GgufValue("replaced"));
  auto bytes = w.WriteToBuffer();
  ASSERT_TRUE(bytes.ok());
  auto file = GgufFile::Parse(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->metadata().size(), 2u);
  EXPECT_EQ((*file)->metadata()[0].first, "a");
  EXPECT_EQ(*(*file)->GetString("a"), "replaced");
}

class AlignmentTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(AlignmentTest, LayoutAndPaddingFollowAlignment) {
  const uint32_t alignment = GetParam();
  GgufWriter w;
  w.Set("general.name", GgufValue("aligned"));
  if (alignment != 32) w.Set("general.alignment", GgufValue(alignment));
  const std::vector<float> f32 = {1, 2, 3};
  std::vector<float> q_in(32);
  for (int i = 0; i < 32; ++i) q_in[i] = static_cast<float>(i) - 10.0f;
  std::vector<uint8_t> q8(34);
  QuantizeRow(GgmlType::kQ8_0, q_in.data(), q8.data(), 32);
  std::vector<uint8_t> f16(10);
  QuantizeRow(GgmlType::kF16, q_in.data(), f16.data(), 5);
  ASSERT_TRUE(w.AddTensor("f32", {3}, GgmlType::kF32, FloatBytes(f32)).ok());
  ASSERT_TRUE(w.AddTensor("q8", {32}, GgmlType::kQ8_0, q8).ok());
  ASSERT_TRUE(w.AddTensor("f16", {5, 1}, GgmlType::kF16, f16).ok());

  auto bytes = w.WriteToBuffer();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(bytes->size(), w.FileSize());
  EXPECT_EQ(bytes->size() % alignment, 0u);
  auto file = GgufFile::Parse(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.alignment(), alignment);
  EXPECT_EQ(f.data_offset() % alignment, 0u);

  std::vector<bool> is_data(bytes->size(), false);
  const std::vector<std::vector<uint8_t>> payloads = {FloatBytes(f32), q8, f16};
  uint64_t expected_offset = 0;
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const GgufTensorInfo& t = f.tensors()[i];
    EXPECT_EQ(t.offset % alignment, 0u) << t.name;
    EXPECT_EQ(t.offset, expected_offset) << t.name;  // Packed: each starts at the next slot.
    expected_offset += (t.num_bytes + alignment - 1) / alignment * alignment;
    ASSERT_EQ(t.num_bytes, payloads[i].size());
    EXPECT_EQ(std::vector<uint8_t>(t.data, t.data + t.num_bytes), payloads[i]) << t.name;
    const size_t begin = static_cast<size_t>(t.data - bytes->data());
    for (size_t j = begin; j < begin + t.num_bytes; ++j) is_data[j] = true;
  }
  // Every byte of the data section that is not tensor data is zero padding.
  for (size_t j = f.data_offset(); j < bytes->size(); ++j) {
    if (!is_data[j]) {
      ASSERT_EQ((*bytes)[j], 0) << "byte " << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Alignments, AlignmentTest, ::testing::Values(1u, 2u, 8u, 32u, 64u, 4096u));

TEST(GgufWriterTest, RejectsMalformedAlignment) {
  for (GgufValue bad : {GgufValue(uint32_t{48}), GgufValue(uint32_t{0}), GgufValue(int32_t{64}),
                        GgufValue(uint64_t{64})}) {
    GgufWriter w;
    w.Set("general.alignment", bad);
    auto bytes = w.WriteToBuffer();
    EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument) << bad.DebugString();
    EXPECT_THAT(std::string(bytes.status().message()), HasSubstr("general.alignment"));
  }
}

TEST(GgufWriterTest, RejectsMalformedValues) {
  GgufWriter mixed;
  mixed.Set("k", Array(GgufType::kUint8, {GgufValue(uint8_t{1}), GgufValue(2)}));
  auto bytes = mixed.WriteToBuffer();
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bytes.status().message()),
              HasSubstr("array item 1 is int32 but the array holds uint8"));

  GgufValue deep = Array(GgufType::kUint8, {});
  for (int i = 0; i < 8; ++i) deep = Array(GgufType::kArray, {deep});  // Nine levels.
  GgufWriter too_deep;
  too_deep.Set("deep", deep);
  EXPECT_THAT(std::string(too_deep.WriteToBuffer().status().message()),
              HasSubstr("nested deeper than 8"));

  GgufWriter empty_key;
  empty_key.Set("", GgufValue(1));
  EXPECT_EQ(empty_key.WriteToBuffer().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GgufWriterTest, AddTensorValidates) {
  GgufWriter w;
  ASSERT_TRUE(w.AddTensor("t", {4}, GgmlType::kF32, std::vector<uint8_t>(16)).ok());
  struct Case {
    absl::Status status;
    std::string message;
  };
  const Case cases[] = {
      {w.AddTensor("t", {4}, GgmlType::kF32, std::vector<uint8_t>(16)), "duplicate"},
      {w.AddTensor("e", {}, GgmlType::kF32, std::vector<uint8_t>()), "0 dimensions"},
      {w.AddTensor("five", {1, 1, 1, 1, 1}, GgmlType::kF32, std::vector<uint8_t>(4)),
       "5 dimensions"},
      {w.AddTensor("z", {4, 0}, GgmlType::kF32, std::vector<uint8_t>()), "not positive"},
      {w.AddTensor("neg", {-4}, GgmlType::kF32, std::vector<uint8_t>()), "not positive"},
      {w.AddTensor("blk", {31}, GgmlType::kQ8_0, std::vector<uint8_t>(34)), "block size 32"},
      {w.AddTensor("k", {256}, GgmlType::kQ4_K, std::vector<uint8_t>(144)), "not supported"},
      {w.AddTensor("size", {4}, GgmlType::kF32, std::vector<uint8_t>(15)), "15 bytes, expected 16"},
      {w.AddTensor("ovf", {int64_t{1} << 32, int64_t{1} << 32}, GgmlType::kF32,
                   GgufWriter::FillFn()),
       "overflows"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.status.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(c.status.message()), HasSubstr(c.message));
  }
  // Rejected tensors leave no trace.
  auto bytes = w.WriteToBuffer();
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ((*GgufFile::Parse(*bytes))->tensors().size(), 1u);
}

TEST(GgufWriterTest, FillCallbacksRunOncePerTensorInOrder) {
  GgufWriter w;
  std::vector<std::string> calls;
  auto fill_with = [&calls](std::string name, uint8_t byte) {
    return [&calls, name, byte](absl::Span<uint8_t> out) {
      calls.push_back(name + ":" + std::to_string(out.size()));
      std::fill(out.begin(), out.end(), byte);
      return absl::OkStatus();
    };
  };
  ASSERT_TRUE(w.AddTensor("x", {32, 2}, GgmlType::kQ4_0, fill_with("x", 0x11)).ok());
  ASSERT_TRUE(w.AddTensor("y", {3}, GgmlType::kBF16, fill_with("y", 0x22)).ok());
  auto bytes = w.WriteToBuffer();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(calls, (std::vector<std::string>{"x:36", "y:6"}));
  auto file = GgufFile::Parse(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufTensorInfo* y = (*file)->FindTensor("y");
  EXPECT_EQ(std::vector<uint8_t>(y->data, y->data + 6), std::vector<uint8_t>(6, 0x22));
  EXPECT_EQ((*file)->FindTensor("x")->shape, (std::vector<int64_t>{32, 2}));
}

TEST(GgufWriterTest, WriteFileMatchesBufferAndReportsProgress) {
  GgufWriter w;
  w.Set("general.architecture", GgufValue("llama"));
  ASSERT_TRUE(w.AddTensor("a", {8}, GgmlType::kF32, std::vector<uint8_t>(32, 7)).ok());
  ASSERT_TRUE(w.AddTensor("b", {3}, GgmlType::kF16, std::vector<uint8_t>(6, 9)).ok());
  const std::string path = TempPath("duet_gguf_writer");
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  ASSERT_TRUE(w.WriteFile(path, [&](uint64_t done, uint64_t total) {
                 progress.emplace_back(done, total);
               }).ok());
  EXPECT_EQ(ReadFile(path), *w.WriteToBuffer());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().first, w.FileSize());
  for (size_t i = 1; i < progress.size(); ++i) {
    EXPECT_GT(progress[i].first, progress[i - 1].first);
    EXPECT_EQ(progress[i].second, w.FileSize());
  }
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 2u);
  std::filesystem::remove(path);
}

TEST(GgufWriterTest, FailedWriteLeavesNoPartialFile) {
  const std::string path = TempPath("duet_gguf_writer_fail");
  {
    std::ofstream out(path, std::ios::binary);
    out << "old";
  }
  GgufWriter w;
  ASSERT_TRUE(w.AddTensor("a", {8}, GgmlType::kF32, std::vector<uint8_t>(32, 7)).ok());
  ASSERT_TRUE(w.AddTensor("b", {8}, GgmlType::kF32, [](absl::Span<uint8_t>) {
                 return absl::DataLossError("source tensor unreadable");
               }).ok());
  absl::Status s = w.WriteFile(path);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("source tensor unreadable"));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const std::vector<uint8_t> old = ReadFile(path);
  EXPECT_EQ(std::string(old.begin(), old.end()), "old");  // The previous file is untouched.
  std::filesystem::remove(path);

  absl::Status missing_dir = w.WriteFile(TempPath("no/such/dir/x"));
  EXPECT_FALSE(missing_dir.ok());
}

}  // namespace
}  // namespace duet
