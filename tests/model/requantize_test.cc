// Tests of the in-memory requantizer: which tensors are re-encoded, that everything else is
// copied exactly, the codecs' error bounds, and a real model (stories260K) still running.
#include "common/model/requantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "common/model/cpu_forward.h"
#include "common/model/gguf_writer.h"
#include "common/model/quant.h"
#include "common/model/synthetic_model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet {
namespace {

using ::testing::HasSubstr;

// A parsed in-memory file with its bytes.
struct OwnedFile {
  std::vector<uint8_t> bytes;
  std::shared_ptr<const GgufFile> file;
};

std::unique_ptr<OwnedFile> WriteAndParse(const GgufWriter& writer) {
  auto owned = std::make_unique<OwnedFile>();
  absl::StatusOr<std::vector<uint8_t>> bytes = writer.WriteToBuffer();
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return nullptr;
  owned->bytes = *std::move(bytes);
  absl::StatusOr<std::unique_ptr<GgufFile>> parsed = GgufFile::Parse(owned->bytes);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return nullptr;
  owned->file = std::move(*parsed);
  return owned;
}

std::unique_ptr<OwnedFile> SyntheticTiny(GgmlType type) {
  SyntheticModelOptions options;
  options.shape = *FindShape("tiny");
  options.weight_type = type;
  options.seed = 3;
  absl::StatusOr<GgufWriter> writer = BuildSyntheticModel(options);
  EXPECT_TRUE(writer.ok()) << writer.status();
  if (!writer.ok()) return nullptr;
  return WriteAndParse(*writer);
}

std::shared_ptr<const GgufFile> Requantize(const GgufFile& source, GgmlType type) {
  absl::StatusOr<std::shared_ptr<const GgufFile>> out = RequantizeGguf(source, type);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *std::move(out) : nullptr;
}

bool SameValue(const GgufValue& a, const GgufValue& b);

bool SameArray(const GgufArray& a, const GgufArray& b) {
  if (a.element_type != b.element_type || a.items.size() != b.items.size()) return false;
  for (size_t i = 0; i < a.items.size(); ++i) {
    if (!SameValue(a.items[i], b.items[i])) return false;
  }
  return true;
}

bool SameValue(const GgufValue& a, const GgufValue& b) {
  if (a.type() != b.type()) return false;
  return std::visit(
      [&b](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        const T& y = std::get<T>(b.storage());
        if constexpr (std::is_same_v<T, GgufArray>) {
          return SameArray(x, y);
        } else {
          return x == y;
        }
      },
      a.storage());
}

void ExpectSameMetadata(const GgufFile& a, const GgufFile& b) {
  ASSERT_EQ(a.metadata().size(), b.metadata().size());
  for (size_t i = 0; i < a.metadata().size(); ++i) {
    EXPECT_EQ(a.metadata()[i].first, b.metadata()[i].first);
    EXPECT_TRUE(SameValue(a.metadata()[i].second, b.metadata()[i].second)) << a.metadata()[i].first;
  }
}

std::vector<float> Decode(const GgufTensorInfo& t) {
  std::vector<float> out(static_cast<size_t>(t.num_elements()));
  DequantizeRow(t.type, t.data, out.data(), t.num_elements());
  return out;
}

bool BytesEqual(const GgufTensorInfo& a, const GgufTensorInfo& b) {
  return a.num_bytes == b.num_bytes && std::memcmp(a.data, b.data, a.num_bytes) == 0;
}

// Checks one re-encoded tensor: its bytes are QuantizeRow of the decoded source rows, and
// every value is within the codec's bound of the source: per block of 32 with largest
// magnitude m, Q4_0 (scale m/8, the far side clamped to 7 steps) is off by at most m/8 and
// Q8_0 (scale m/127, rounding) by at most m/254, plus the scale's f16 rounding (relative
// 2^-11) times the largest code value, which is at most m * 2^-11.
void ExpectRequantized(const GgufTensorInfo& src, const GgufTensorInfo& dst, GgmlType type) {
  ASSERT_EQ(dst.type, type) << src.name;
  const std::vector<float> before = Decode(src);
  std::vector<uint8_t> expected(dst.num_bytes);
  QuantizeRow(type, before.data(), expected.data(), src.num_elements());
  EXPECT_EQ(std::memcmp(expected.data(), dst.data, dst.num_bytes), 0) << src.name;

  const std::vector<float> after = Decode(dst);
  const double divisor = type == GgmlType::kQ4_0 ? 8.0 : 254.0;
  for (size_t block = 0; block < before.size(); block += 32) {
    float m = 0;
    for (size_t i = block; i < block + 32; ++i) m = std::max(m, std::fabs(before[i]));
    for (size_t i = block; i < block + 32; ++i) {
      ASSERT_LE(std::fabs(after[i] - before[i]), m / divisor + m * 0x1.0p-11 + 1e-7)
          << src.name << " element " << i;
    }
  }
}

TEST(RequantizeTest, SyntheticModelMatricesBecomeQ4_0AndTheRestIsCopied) {
  const std::unique_ptr<OwnedFile> source = SyntheticTiny(GgmlType::kF16);
  ASSERT_NE(source, nullptr);
  const std::shared_ptr<const GgufFile> out = Requantize(*source->file, GgmlType::kQ4_0);
  ASSERT_NE(out, nullptr);
  ExpectSameMetadata(*source->file, *out);
  ASSERT_EQ(out->tensors().size(), source->file->tensors().size());
  int requantized = 0;
  for (size_t i = 0; i < out->tensors().size(); ++i) {
    const GgufTensorInfo& src = source->file->tensors()[i];
    const GgufTensorInfo& dst = out->tensors()[i];
    EXPECT_EQ(dst.name, src.name);
    EXPECT_EQ(dst.shape, src.shape);
    if (src.type == GgmlType::kF16) {  // The tiny shape's 2-D weights, all 32-aligned rows.
      ASSERT_EQ(src.shape.size(), 2u) << src.name;
      ExpectRequantized(src, dst, GgmlType::kQ4_0);
      ++requantized;
    } else {
      EXPECT_EQ(dst.type, src.type) << src.name;
      EXPECT_TRUE(BytesEqual(src, dst)) << src.name;
    }
  }
  // token_embd, output, and 7 matrices in each of 2 layers.
  EXPECT_EQ(requantized, 2 + 7 * 2);
  EXPECT_EQ(out->FindTensor("token_embd.weight")->type, GgmlType::kQ4_0);
  EXPECT_EQ(out->FindTensor("output.weight")->type, GgmlType::kQ4_0);
  EXPECT_EQ(out->FindTensor("blk.0.attn_norm.weight")->type, GgmlType::kF32);
}

TEST(RequantizeTest, Q8_0WithinItsErrorBound) {
  const std::unique_ptr<OwnedFile> source = SyntheticTiny(GgmlType::kF32);
  ASSERT_NE(source, nullptr);
  const std::shared_ptr<const GgufFile> out = Requantize(*source->file, GgmlType::kQ8_0);
  ASSERT_NE(out, nullptr);
  ExpectRequantized(*source->file->FindTensor("blk.1.ffn_down.weight"),
                    *out->FindTensor("blk.1.ffn_down.weight"), GgmlType::kQ8_0);
  ExpectRequantized(*source->file->FindTensor("token_embd.weight"),
                    *out->FindTensor("token_embd.weight"), GgmlType::kQ8_0);
}

// A float tensor of `count` values i * scale - offset.
std::vector<float> Ramp(int64_t count, float scale, float offset) {
  std::vector<float> v(static_cast<size_t>(count));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * scale - offset;
  return v;
}

std::vector<uint8_t> Encode(GgmlType type, const std::vector<float>& values) {
  std::vector<uint8_t> out(
      static_cast<size_t>(GgmlRowBytes(type, static_cast<int64_t>(values.size()))));
  QuantizeRow(type, values.data(), out.data(), static_cast<int64_t>(values.size()));
  return out;
}

std::vector<uint8_t> FloatBytes(const std::vector<float>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(float));
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

TEST(RequantizeTest, EligibilityRules) {
  GgufWriter writer;
  writer.Set("general.architecture", GgufValue("llama"));
  writer.Set("general.alignment", GgufValue(uint32_t{64}));
  GgufArray array;
  array.element_type = GgufType::kString;
  array.items = {GgufValue("a"), GgufValue("b")};
  writer.Set("tokenizer.ggml.tokens", GgufValue(array));
  auto add = [&](const std::string& name, std::vector<int64_t> shape, GgmlType type,
                 std::vector<uint8_t> data) {
    ASSERT_TRUE(writer.AddTensor(name, std::move(shape), type, std::move(data)).ok()) << name;
  };
  add("a.weight", {64, 3}, GgmlType::kBF16, Encode(GgmlType::kBF16, Ramp(192, 0.01f, 1.0f)));
  add("b.weight", {32, 2}, GgmlType::kQ8_0, Encode(GgmlType::kQ8_0, Ramp(64, 0.03f, 0.9f)));
  add("c.weight", {32, 2}, GgmlType::kQ4_0, Encode(GgmlType::kQ4_0, Ramp(64, 0.02f, 0.5f)));
  add("d.weight", {16, 4}, GgmlType::kF32, FloatBytes(Ramp(64, 0.1f, 2.0f)));      // Short rows.
  add("e.weight", {64}, GgmlType::kF32, FloatBytes(Ramp(64, 0.1f, 2.0f)));         // 1-D (a norm).
  add("f.bias", {32, 2}, GgmlType::kF32, FloatBytes(Ramp(64, 0.1f, 2.0f)));        // Not a weight.
  add("g.weight", {32, 2, 2}, GgmlType::kF32, FloatBytes(Ramp(128, 0.1f, 2.0f)));  // 3-D.
  const std::unique_ptr<OwnedFile> source = WriteAndParse(writer);
  ASSERT_NE(source, nullptr);

  const std::shared_ptr<const GgufFile> out = Requantize(*source->file, GgmlType::kQ4_0);
  ASSERT_NE(out, nullptr);
  ExpectSameMetadata(*source->file, *out);
  EXPECT_EQ(out->alignment(), 64u);
  const GgufFile& in = *source->file;
  ExpectRequantized(*in.FindTensor("a.weight"), *out->FindTensor("a.weight"), GgmlType::kQ4_0);
  ExpectRequantized(*in.FindTensor("b.weight"), *out->FindTensor("b.weight"), GgmlType::kQ4_0);
  for (const char* name : {"c.weight", "d.weight", "e.weight", "f.bias", "g.weight"}) {
    const GgufTensorInfo* src = in.FindTensor(name);
    const GgufTensorInfo* dst = out->FindTensor(name);
    ASSERT_NE(dst, nullptr) << name;
    EXPECT_EQ(dst->type, src->type) << name;
    EXPECT_EQ(dst->shape, src->shape) << name;
    EXPECT_TRUE(BytesEqual(*src, *dst)) << name;
  }
}

TEST(RequantizeTest, OnlyQ4_0AndQ8_0Targets) {
  const std::unique_ptr<OwnedFile> source = SyntheticTiny(GgmlType::kF32);
  ASSERT_NE(source, nullptr);
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ4_K}) {
    absl::StatusOr<std::shared_ptr<const GgufFile>> out = RequantizeGguf(*source->file, type);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(out.status().message()), HasSubstr("q4_0 or q8_0"));
  }
}

TEST(RequantizeTest, ResultOutlivesTheSource) {
  std::shared_ptr<const GgufFile> out;
  std::vector<float> expected;
  {
    const std::unique_ptr<OwnedFile> source = SyntheticTiny(GgmlType::kF16);
    ASSERT_NE(source, nullptr);
    out = Requantize(*source->file, GgmlType::kQ8_0);
    ASSERT_NE(out, nullptr);
    expected = Decode(*out->FindTensor("output.weight"));
  }
  std::shared_ptr<const GgufFile> copy = out;
  out.reset();
  EXPECT_EQ(Decode(*copy->FindTensor("output.weight")), expected);
}

TEST(RequantizeTest, Stories260kRequantizedStillRuns) {
  const std::string path = std::string(DUET_SHARED_DIR) + "/models/stories260K.gguf";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << "stories260K.gguf not found at " << path
                 << " (set DUET_SHARED_DIR to the directory holding models/)";
  }
  absl::StatusOr<std::unique_ptr<GgufFile>> opened = GgufFile::Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const std::shared_ptr<const GgufFile> source = std::move(*opened);
  const std::shared_ptr<const GgufFile> q8 = Requantize(*source, GgmlType::kQ8_0);
  ASSERT_NE(q8, nullptr);
  ExpectSameMetadata(*source, *q8);

  int requantized = 0;
  for (const GgufTensorInfo& src : source->tensors()) {
    const GgufTensorInfo* dst = q8->FindTensor(src.name);
    ASSERT_NE(dst, nullptr) << src.name;
    const bool eligible = src.name.ends_with(".weight") && src.shape.size() == 2 &&
                          src.shape[0] % 32 == 0 && src.type == GgmlType::kF32;
    if (eligible) {
      ExpectRequantized(src, *dst, GgmlType::kQ8_0);
      ++requantized;
    } else {
      EXPECT_TRUE(BytesEqual(src, *dst)) << src.name;
    }
  }
  EXPECT_GT(requantized, 0);

  // The Q8_0 copy is still the same model: first-step logits from BOS within 2% of the f32
  // ones' scale, with the same argmax.
  absl::StatusOr<std::unique_ptr<CpuModel>> reference = CpuModel::Load(source);
  ASSERT_TRUE(reference.ok()) << reference.status();
  absl::StatusOr<std::unique_ptr<CpuModel>> quantized = CpuModel::Load(q8);
  ASSERT_TRUE(quantized.ok()) << quantized.status();
  CpuKvCache reference_cache((*reference)->config(), 4);
  CpuKvCache quantized_cache((*quantized)->config(), 4);
  const std::vector<int32_t> bos = {1};
  absl::StatusOr<std::vector<float>> want = (*reference)->Forward(bos, &reference_cache);
  absl::StatusOr<std::vector<float>> got = (*quantized)->Forward(bos, &quantized_cache);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(want->size(), got->size());
  float max_diff = 0;
  for (size_t i = 0; i < want->size(); ++i)
    max_diff = std::max(max_diff, std::fabs((*want)[i] - (*got)[i]));
  float max_abs = 0;
  for (float x : *want) max_abs = std::max(max_abs, std::fabs(x));
  EXPECT_LT(max_diff, 0.02f * max_abs);  // Measured: 0.15 on logits up to 17.
  EXPECT_EQ(std::max_element(want->begin(), want->end()) - want->begin(),
            std::max_element(got->begin(), got->end()) - got->begin());
}

}  // namespace
}  // namespace duet
