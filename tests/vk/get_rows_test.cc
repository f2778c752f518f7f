// Embedding gather for F32 / F16 / Q8_0 / Q4_0 tables against DequantizeRow. Decoding is exact
// on both sides (f16 -> f32 conversion, one f32 multiply per element), so the tolerance is 0.
#include <gtest/gtest.h>

#include "common/model/ggml_types.h"
#include "common/model/quant.h"
#include "common/vk/ops_elementwise.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using testing::AllClose;
using testing::Download;
using testing::PoisonedBuffer;
using testing::RandomFloats;
using testing::Upload;

class GetRowsTest : public testing::VkTest, public ::testing::WithParamInterface<GgmlType> {};
class GetRowsErrorsTest : public testing::VkTest {};

struct Table {
  std::vector<uint8_t> bytes;  // [num_rows, row_bytes]
  int64_t row_bytes = 0;
};

// row_stride: bytes between rows (0 = packed); the gaps hold 0xff.
Table MakeTable(std::mt19937& rng, GgmlType type, int64_t num_rows, int64_t n,
                int64_t row_stride = 0) {
  Table t;
  t.row_bytes = row_stride > 0 ? row_stride : GgmlRowBytes(type, n);
  t.bytes.assign(static_cast<size_t>(num_rows * t.row_bytes), 0xff);
  for (int64_t r = 0; r < num_rows; ++r) {
    const std::vector<float> row = RandomFloats(rng, static_cast<size_t>(n), -2.0f, 2.0f);
    QuantizeRow(type, row.data(), t.bytes.data() + r * t.row_bytes, n);
  }
  return t;
}

// ids -> expected f32 rows (zeros for ids outside the table).
std::vector<float> Reference(GgmlType type, const Table& t, int64_t num_rows, int64_t n,
                             const std::vector<int32_t>& ids) {
  std::vector<float> want(ids.size() * static_cast<size_t>(n), 0.0f);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= num_rows) continue;
    DequantizeRow(type, t.bytes.data() + ids[i] * t.row_bytes, want.data() + i * n, n);
  }
  return want;
}

void CheckGather(Device& device, Kernels& kernels, CommandList& cl, std::mt19937& rng,
                 GgmlType type, int64_t num_rows, int64_t n, int64_t num_tokens,
                 int64_t row_stride = 0) {
  SCOPED_TRACE(::testing::Message() << GgmlTypeName(type) << " rows " << num_rows << " n " << n
                                    << " tokens " << num_tokens << " row_stride " << row_stride);
  const Table table = MakeTable(rng, type, num_rows, n, row_stride);
  std::vector<int32_t> ids(static_cast<size_t>(num_tokens));
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(num_rows - 1));
  for (int32_t& id : ids) id = pick(rng);
  if (num_tokens >= 3) {
    ids[1] = -1;                                  // invalid: zeros
    ids[2] = static_cast<int32_t>(num_rows);      // invalid: zeros
    ids[0] = static_cast<int32_t>(num_rows - 1);  // last row (end of the table)
  }
  const std::vector<float> want = Reference(type, table, num_rows, n, ids);
  Buffer table_buf = Upload(device, table.bytes);
  Buffer ids_buf = Upload(device, ids);
  Buffer out = PoisonedBuffer(device, want.size() * 4);
  ASSERT_TRUE(RecordGetRows(cl, kernels, type, table_buf.view(), num_rows, n, ids_buf.view(),
                            out.view(), num_tokens, row_stride)
                  .ok());
  ASSERT_TRUE(cl.Submit().ok());
  EXPECT_TRUE(AllClose(Download<float>(device, out.view()), want, 0.0f, 0.0f));
}

TEST_P(GetRowsTest, MatchesDequantizeRow) {
  const GgmlType type = GetParam();
  std::mt19937 rng(testing::TestSeed());
  const bool blocked = TraitsOf(type).block_size > 1;
  CheckGather(device(), kernels(), cl(), rng, type, 1, 32, 1);
  CheckGather(device(), kernels(), cl(), rng, type, 7, 96, 5);
  CheckGather(device(), kernels(), cl(), rng, type, 100, 320, 300);
  CheckGather(device(), kernels(), cl(), rng, type, 3, 4096, 4);
  if (!blocked) CheckGather(device(), kernels(), cl(), rng, type, 11, 33, 9);  // odd rows
  // Rows padded to 16 bytes, as the Vulkan engine uploads quantized weights on CPU devices.
  CheckGather(device(), kernels(), cl(), rng, type, 9, 96, 6, GgmlRowBytes(type, 96) + 16);
}

TEST_P(GetRowsTest, TableSplitAcrossASmallBindableRange) {
  const GgmlType type = GetParam();
  DeviceOptions options;
  options.device = std::to_string(device().info().index);
  options.max_storage_buffer_range_override = 4096;
  std::unique_ptr<Device> small = std::move(Device::Create(options)).value();
  Kernels small_kernels(small.get());
  std::unique_ptr<CommandList> small_cl = std::move(CommandList::Create(small.get())).value();
  std::mt19937 rng(testing::TestSeed());
  // 200 rows of 64 elements (50 KiB as f32, 7 KiB as Q4_0) span several 4 KiB chunks; the
  // 12 output rows (3 KiB) fit in one view, so only the table is split.
  CheckGather(*small, small_kernels, *small_cl, rng, type, 200, 64, 12);
}

TEST_F(GetRowsErrorsTest, RejectsUnsupportedTypesAndPartialBlocks) {
  Buffer b = PoisonedBuffer(device(), 4096);
  EXPECT_EQ(RecordGetRows(cl(), kernels(), GgmlType::kQ4_K, b.view(), 2, 256, b.view(), b.view(), 1)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RecordGetRows(cl(), kernels(), GgmlType::kQ8_0, b.view(), 2, 40, b.view(), b.view(), 1)
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Row strides below the row's bytes, or off the shader's read alignment.
  EXPECT_EQ(RecordGetRows(cl(), kernels(), GgmlType::kQ8_0, b.view(), 2, 64, b.view(), b.view(), 1,
                          60)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RecordGetRows(cl(), kernels(), GgmlType::kF32, b.view(), 2, 64, b.view(), b.view(), 1,
                          258)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cl().num_recorded(), 0);
}

INSTANTIATE_TEST_SUITE_P(Types, GetRowsTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0,
                                           GgmlType::kQ4_0),
                         [](const ::testing::TestParamInfo<GgmlType>& param_info) {
                           return std::string(GgmlTypeName(param_info.param));
                         });

}  // namespace
}  // namespace duet::vk
