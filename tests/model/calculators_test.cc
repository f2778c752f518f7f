#include "common/model/calculators.h"

#include <memory>
#include <string>
#include <vector>

#include "common/model/gguf.h"
#include "common/model/synthetic_model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kGiB = uint64_t{1} << 30;

// A 70B-class dense model: 80 layers, 64 query heads of 128.
KvGeometry Dense70B(int64_t kv_heads) {
  return {.num_layers = 80, .num_heads = 64, .num_kv_heads = kv_heads, .head_dim = 128};
}

const WeightMemoryEstimate& Find(const QuantReport& r, const std::string& format) {
  for (const WeightMemoryEstimate& e : r.estimates) {
    if (e.format == format) return e;
  }
  ADD_FAILURE() << "no estimate for " << format;
  return r.estimates.front();
}

// ---- KV cache ---------------------------------------------------------------------------------

TEST(KvCalcTest, Dense70BMhaAt8kIs20GiB) {
  const KvCacheEstimate e = EstimateKvCache(Dense70B(64), 8192, 1, KvDtype::kF16);
  // 2 (K, V) * 80 layers * 64 heads * 128 dims * 8192 tokens * 2 bytes.
  EXPECT_EQ(e.data_bytes, 21474836480u);
  EXPECT_EQ(e.scale_bytes, 0u);
  EXPECT_EQ(e.total_bytes(), 20 * kGiB);
}

TEST(KvCalcTest, GqaDividesByTheGroupSize) {
  const KvCacheEstimate e = EstimateKvCache(Dense70B(8), 8192, 1, KvDtype::kF16);
  EXPECT_EQ(e.total_bytes(), 5 * kGiB / 2);  // 2.5 GiB
  EXPECT_EQ(EstimateKvCache(Dense70B(1), 8192, 1, KvDtype::kF16).total_bytes(), 20 * kGiB / 64);
}

TEST(KvCalcTest, BatchAndDtypeScale) {
  EXPECT_EQ(EstimateKvCache(Dense70B(8), 8192, 4, KvDtype::kF16).total_bytes(), 10 * kGiB);
  EXPECT_EQ(EstimateKvCache(Dense70B(8), 8192, 1, KvDtype::kF32).total_bytes(), 5 * kGiB);
  EXPECT_EQ(EstimateKvCache(Dense70B(8), 8192, 1, KvDtype::kBF16).total_bytes(), 5 * kGiB / 2);
}

TEST(KvCalcTest, QuantizedTypesAddScales) {
  // fp8: 1 byte per element, plus an f32 per 16-token block per KV head per layer, K and V:
  // 2 * 80 * 8 * (8192 / 16) * 4 = 2621440 bytes.
  KvCacheEstimate fp8 = EstimateKvCache(Dense70B(8), 8192, 1, KvDtype::kFp8);
  EXPECT_EQ(fp8.data_bytes, 5 * kGiB / 4);
  EXPECT_EQ(fp8.scale_bytes, 2621440u);
  KvCacheEstimate int8 = EstimateKvCache(Dense70B(8), 8192, 1, KvDtype::kInt8);
  EXPECT_EQ(int8.total_bytes(), fp8.total_bytes());
  // A partial block still has its scale: 17 tokens -> 2 blocks.
  EXPECT_EQ(EstimateKvCache(Dense70B(8), 17, 1, KvDtype::kFp8).scale_bytes, 2u * 80 * 8 * 2 * 4);
  // int4: half a byte per element, plus an f16 per 32 elements: 128 / 32 = 4 per head vector,
  // 2 * 80 * 8 * 8192 * 4 * 2 = 83886080 bytes.
  KvCacheEstimate int4 = EstimateKvCache(Dense70B(8), 8192, 1, KvDtype::kInt4);
  EXPECT_EQ(int4.data_bytes, 5 * kGiB / 8);
  EXPECT_EQ(int4.scale_bytes, 83886080u);
  // FP8 stays within Duet's 0.53x-of-FP16 wire budget.
  EXPECT_LT(static_cast<double>(fp8.total_bytes()),
            0.53 * static_cast<double>(
                       EstimateKvCache(Dense70B(8), 8192, 1, KvDtype::kF16).total_bytes()));
}

TEST(KvCalcTest, ShapesUseTheirKvHeads) {
  // llama-3.2-1b: 16 layers * 8 KV heads * 64 dims * 2 (K, V) * 2 bytes = 32 KiB per token.
  const KvGeometry g = KvGeometryOf(*FindShape("llama-3.2-1b"));
  EXPECT_EQ(g.num_kv_heads, 8);
  EXPECT_EQ(EstimateKvCache(g, 1, 1, KvDtype::kF16).total_bytes(), 32768u);
  EXPECT_EQ(EstimateKvCache(g, 131072, 1, KvDtype::kF16).total_bytes(), 4 * kGiB);
}

TEST(KvCalcTest, ReportRendersTextAndJson) {
  absl::StatusOr<KvCacheReport> r =
      BuildKvCacheReport("70B \"mha\"", Dense70B(64), 8192, 1, AllKvDtypes());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->estimates.size(), 6u);
  const std::string text = RenderKvCacheText(*r);
  EXPECT_THAT(text, HasSubstr("80 layers x 64 KV heads x head_dim 128"));
  EXPECT_THAT(text, HasSubstr("MHA"));
  EXPECT_THAT(text, HasSubstr("20.00 GiB"));
  EXPECT_THAT(text, HasSubstr("21474836480"));
  EXPECT_THAT(text, HasSubstr("f32 scale per 16-token block per KV head"));
  const std::string json = RenderKvCacheJson(*r);
  EXPECT_THAT(json, HasSubstr("\"model\": \"70B \\\"mha\\\"\""));
  EXPECT_THAT(json, HasSubstr("{\"dtype\": \"f16\", \"data_bytes\": 21474836480, "
                              "\"scale_bytes\": 0, \"total_bytes\": 21474836480"));
  EXPECT_THAT(RenderKvCacheText(*BuildKvCacheReport("x", Dense70B(8), 8192, 1, AllKvDtypes())),
              HasSubstr("GQA 8:1"));
}

TEST(KvCalcTest, RejectsBadInput) {
  EXPECT_FALSE(BuildKvCacheReport("m", Dense70B(8), 0, 1, AllKvDtypes()).ok());
  EXPECT_FALSE(BuildKvCacheReport("m", Dense70B(8), 8192, -1, AllKvDtypes()).ok());
  EXPECT_FALSE(BuildKvCacheReport("m", Dense70B(0), 8192, 1, AllKvDtypes()).ok());
  EXPECT_THAT(
      BuildKvCacheReport("m", Dense70B(8), int64_t{1} << 40, int64_t{1} << 20, AllKvDtypes())
          .status()
          .message(),
      HasSubstr("overflows"));
  EXPECT_EQ(*ParseKvDtype("FP8"), KvDtype::kFp8);
  EXPECT_THAT(ParseKvDtype("fp4").status().message(), HasSubstr("f32, f16, bf16, fp8, int8, int4"));
}

// ---- Weight memory ----------------------------------------------------------------------------

TEST(QuantCalcTest, TinyByHand) {
  // tiny: 2-D weights token_embd + output 2 * 64*260 = 33280, per layer 64*64*2 + 64*32*2 +
  // 64*128*3 = 36864, two layers 73728: 107008 elements = 3344 blocks of 32. 1-D: four block
  // norms and output_norm, 5 * 64 = 320 f32 elements = 1280 bytes.
  absl::StatusOr<QuantReport> r = BuildQuantReport("tiny", TensorLayout(*FindShape("tiny")));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->weight_elements, 107008);
  EXPECT_EQ(r->f32_elements, 320);
  EXPECT_EQ(r->num_f32_tensors, 5);
  EXPECT_EQ(r->num_weight_tensors, 16);
  EXPECT_EQ(r->num_parameters, 107328);

  const WeightMemoryEstimate& q8 = Find(*r, "q8_0");  // 34 bytes per block.
  EXPECT_EQ(q8.weight_bytes, 3344u * 34);
  EXPECT_EQ(q8.overhead_bytes, 3344u * 2);
  EXPECT_EQ(q8.f32_bytes, 1280u);
  EXPECT_EQ(q8.total_bytes, 3344u * 34 + 1280);
  EXPECT_DOUBLE_EQ(q8.bits_per_weight, 8.5);
  const WeightMemoryEstimate& q4 = Find(*r, "q4_0");  // 18 bytes per block.
  EXPECT_EQ(q4.total_bytes, 3344u * 18 + 1280);
  EXPECT_DOUBLE_EQ(q4.bits_per_weight, 4.5);
  EXPECT_EQ(Find(*r, "f16").total_bytes, 107008u * 2 + 1280);
  EXPECT_EQ(Find(*r, "f32").total_bytes, 107328u * 4);
  EXPECT_EQ(Find(*r, "f16").overhead_bytes, 0u);
  // int8: one f32 per output row. Rows: 260 * 2 + per layer (64 + 32 + 32 + 64 + 128 * 2 + 64)
  // * 2 = 520 + 1024 = 1544.
  EXPECT_EQ(Find(*r, "int8").overhead_bytes, 1544u * 4);
  EXPECT_EQ(Find(*r, "int8").total_bytes, 107008u + 1544 * 4 + 1280);
  // int4: f16 per 128-element group; rows of 64 take one group, ffn_down's rows of 128 one.
  EXPECT_EQ(Find(*r, "int4").overhead_bytes, 1544u * 2);

  // No row is a multiple of 256, so K-quants fall back: q4_k -> q5_0 (22 bytes per 32).
  const WeightMemoryEstimate& q4k = Find(*r, "q4_k");
  EXPECT_EQ(q4k.fallback_tensors, 16);
  EXPECT_EQ(q4k.weight_bytes, 3344u * 22);
  EXPECT_THAT(q4k.fallback_note, HasSubstr("-> q5_0"));
}

TEST(QuantCalcTest, KQuantsUseTheirRealBlocks) {
  // TinyLlama: every row (2048 or 5632 = 22 * 256) is K-quant aligned.
  absl::StatusOr<QuantReport> r =
      BuildQuantReport("tinyllama", TensorLayout(*FindShape("tinyllama-1.1b")));
  ASSERT_TRUE(r.ok());
  const uint64_t blocks = static_cast<uint64_t>(r->weight_elements / 256);
  EXPECT_EQ(Find(*r, "q4_k").weight_bytes, blocks * 144);
  EXPECT_EQ(Find(*r, "q4_k").overhead_bytes, blocks * 16);
  EXPECT_EQ(Find(*r, "q6_k").weight_bytes, blocks * 210);
  EXPECT_EQ(Find(*r, "q5_k").weight_bytes, blocks * 176);
  EXPECT_EQ(Find(*r, "q3_k").weight_bytes, blocks * 110);
  EXPECT_EQ(Find(*r, "q2_k").weight_bytes, blocks * 84);
  EXPECT_EQ(Find(*r, "q4_k").fallback_tensors, 0);
  EXPECT_NEAR(Find(*r, "q4_k").bits_per_weight, 4.5, 1e-9);
  EXPECT_NEAR(Find(*r, "q6_k").bits_per_weight, 6.5625, 1e-9);

  // Qwen2.5's 896-wide rows are not: they fall back; ffn_down (4864 = 19 * 256) does not.
  r = BuildQuantReport("qwen", TensorLayout(*FindShape("qwen2.5-0.5b")));
  ASSERT_TRUE(r.ok());
  const WeightMemoryEstimate& q4k = Find(*r, "q4_k");
  EXPECT_EQ(q4k.fallback_tensors, 1 + 24 * 6);
  EXPECT_THAT(q4k.fallback_note, HasSubstr("145 tensors with 896-element rows -> q5_0"));
}

TEST(QuantCalcTest, ReportsFromAGgufMatchTheShape) {
  SyntheticModelOptions options;
  options.shape = *FindShape("tiny");
  options.weight_type = GgmlType::kQ8_0;
  absl::StatusOr<GgufWriter> writer = BuildSyntheticModel(options);
  ASSERT_TRUE(writer.ok());
  absl::StatusOr<std::vector<uint8_t>> bytes = writer->WriteToBuffer();
  ASSERT_TRUE(bytes.ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<QuantReport> from_file = BuildQuantReport("tiny", TensorSpecsFromGguf(**file));
  absl::StatusOr<QuantReport> from_shape =
      BuildQuantReport("tiny", TensorLayout(*FindShape("tiny")));
  ASSERT_TRUE(from_file.ok() && from_shape.ok());
  EXPECT_EQ(RenderQuantJson(*from_file), RenderQuantJson(*from_shape));
  // The q8_0 estimate is the file's tensor data exactly.
  uint64_t data = 0;
  for (const GgufTensorInfo& t : (*file)->tensors()) data += t.num_bytes;
  EXPECT_EQ(Find(*from_file, "q8_0").total_bytes, data);
}

TEST(QuantCalcTest, RendersTextAndJson) {
  absl::StatusOr<QuantReport> r = BuildQuantReport("tiny", TensorLayout(*FindShape("tiny")));
  ASSERT_TRUE(r.ok());
  const std::string text = RenderQuantText(*r);
  EXPECT_THAT(text, HasSubstr("107328 parameters"));
  EXPECT_THAT(text, HasSubstr("stay f32"));
  EXPECT_THAT(text, HasSubstr("q8_0"));
  const std::string json = RenderQuantJson(*r);
  EXPECT_THAT(json, HasSubstr("{\"type\": \"q8_0\", \"total_bytes\": 114976, "
                              "\"weight_bytes\": 113696, \"overhead_bytes\": 6688, "
                              "\"f32_bytes\": 1280, \"bits_per_weight\": 8.5000"));
  EXPECT_FALSE(BuildQuantReport("empty", {}).ok());
}

}  // namespace
}  // namespace duet
