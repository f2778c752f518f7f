// KV export/import between engines: a sequence prefilled by engine A, exported in pieces and
// imported into engine B (another pool, other block ids, another tail slot, blocks that held
// another sequence), decodes in B exactly as in A: the same greedy tokens and bit-identical
// logits (same backend), for every KV dtype, at a length that ends inside a block and one that
// ends on a block boundary. Vulkan runs both copy paths (mapped memcpy and staging buffer).
// Across backends, an F32 cache exported by the CPU engine and imported into the Vulkan engine
// decodes within the vulkan_vs_cpu tolerance of a Vulkan self-prefill. Bad calls are
// INVALID_ARGUMENT naming the numbers and write nothing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/engine.h"
#include "common/kv/kv_payload.h"
#include "tests/engine/engine_test_util.h"

namespace duet::testing {
namespace {

using ::testing::HasSubstr;

// Greedy decoding of `steps` tokens from `first`, one DecodeStep each: every step's logits.
std::vector<std::vector<float>> Decode(Engine& engine, const SequenceRef& seq, int32_t first,
                                       int steps) {
  std::vector<std::vector<float>> out;
  SequenceRef s = seq;
  int32_t token = first;
  for (int i = 0; i < steps; ++i) {
    const DecodeItem item{s, token};
    absl::StatusOr<std::vector<float>> logits = engine.DecodeStep({&item, 1});
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (!logits.ok()) break;
    token = ArgMaxRows(*logits, engine.config().vocab_size)[0];
    out.push_back(std::move(*logits));
    ++s.num_cached;
  }
  return out;
}

using TransferCase = std::tuple<std::string, kv::CacheDtype>;

class KvTransferTest : public ::testing::TestWithParam<TransferCase> {};

TEST_P(KvTransferTest, ImportedSequenceDecodesExactlyAsTheExporter) {
  const auto& [mode, dtype] = GetParam();
  if (mode != "cpu" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 21);
  ASSERT_NE(file, nullptr);
  std::unique_ptr<Engine> a = MakeBackend(mode, file, TestOptions(dtype, 32, 4));
  std::unique_ptr<Engine> b = MakeBackend(mode, file, TestOptions(dtype, 24, 3));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const int64_t vocab = a->config().vocab_size;
  const int64_t layers = a->config().num_layers;
  const kv::KvLayout& layout = a->kv_layout();

  struct Run {
    int64_t num_tokens;
    std::vector<int32_t> table_a, table_b;
    int32_t tail_a, tail_b;
  };
  const Run runs[] = {{37, {5, 9, 2, 14}, {17, 3, 11, 8}, 2, 0},
                      {32, {20, 21, 22, 23}, {0, 1, 2, 4}, 3, 1}};
  for (const Run& run : runs) {
    SCOPED_TRACE(absl::StrCat(run.num_tokens, " tokens"));
    const std::vector<int32_t> prompt = SeededTokens(run.num_tokens, vocab, 5);
    absl::StatusOr<std::vector<float>> logits = a->Prefill({run.table_a, 0, run.tail_a}, prompt);
    ASSERT_TRUE(logits.ok()) << logits.status();
    // B's blocks and tail slot first hold another sequence: the import overwrites them.
    ASSERT_TRUE(b->Prefill({run.table_b, 0, run.tail_b}, SeededTokens(45, vocab, 6)).ok());

    const int64_t blocks = kv::NumBlocksFor(layout, run.num_tokens);
    const SequenceRef seq_a{run.table_a, 0, run.tail_a};
    const SequenceRef seq_b{run.table_b, 0, run.tail_b};
    // Per layer, split block ranges, imported out of order.
    const std::vector<kv::KvRect> pieces = {
        {1, layers, 0, blocks}, {0, 1, 1, blocks}, {0, 1, 0, 1}};
    for (const kv::KvRect& rect : pieces) {
      absl::StatusOr<std::vector<uint8_t>> payload = a->ExportKv(seq_a, run.num_tokens, rect);
      ASSERT_TRUE(payload.ok()) << payload.status();
      EXPECT_EQ(static_cast<int64_t>(payload->size()),
                kv::KvPayloadBytes(layout, run.num_tokens, rect));
      ASSERT_TRUE(b->ImportKv(seq_b, run.num_tokens, rect, *payload).ok());
    }
    const kv::KvRect all = kv::FullRect(layout, run.num_tokens);
    absl::StatusOr<std::vector<uint8_t>> from_a = a->ExportKv(seq_a, run.num_tokens, all);
    absl::StatusOr<std::vector<uint8_t>> from_b = b->ExportKv(seq_b, run.num_tokens, all);
    ASSERT_TRUE(from_a.ok() && from_b.ok());
    EXPECT_EQ(*from_b, *from_a);

    // The prefill node's first token; then both decode (across a block boundary at 37 + 5).
    const int32_t first = ArgMaxRows(*logits, vocab)[0];
    const std::vector<std::vector<float>> want =
        Decode(*a, {run.table_a, run.num_tokens, run.tail_a}, first, 6);
    const std::vector<std::vector<float>> got =
        Decode(*b, {run.table_b, run.num_tokens, run.tail_b}, first, 6);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(got[i], want[i]) << "decode step " << i;
      EXPECT_EQ(ArgMaxRows(got[i], vocab), ArgMaxRows(want[i], vocab)) << "decode step " << i;
    }
  }
}

std::string TransferCaseName(const ::testing::TestParamInfo<TransferCase>& info) {
  return std::get<0>(info.param) + "_" + std::string(kv::CacheDtypeName(std::get<1>(info.param)));
}

INSTANTIATE_TEST_SUITE_P(All, KvTransferTest,
                         ::testing::Combine(::testing::Values("cpu", "vulkan"),
                                            ::testing::Values(kv::CacheDtype::kF32,
                                                              kv::CacheDtype::kF16,
                                                              kv::CacheDtype::kFp8E4M3)),
                         TransferCaseName);
// The staging-buffer path (discrete GPUs): pool cells (merged across consecutive block ids) and
// FP8 cells (data, scales, tail).
INSTANTIATE_TEST_SUITE_P(Staged, KvTransferTest,
                         ::testing::Values(TransferCase{"vulkan_staged", kv::CacheDtype::kF32},
                                           TransferCase{"vulkan_staged", kv::CacheDtype::kFp8E4M3}),
                         TransferCaseName);

// The CPU engine's F32 KV imported into the Vulkan engine decodes like Vulkan's own prefill,
// within the vulkan_vs_cpu tolerance for F32 KV (same tokens fed to both).
TEST(KvTransferAcrossBackendsTest, CpuExportVulkanImportF32) {
  if (!HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kF16, 22);
  ASSERT_NE(file, nullptr);
  const EngineOptions options = TestOptions(kv::CacheDtype::kF32, 16, 2);
  std::unique_ptr<Engine> cpu = MakeEngine("cpu", file, options);
  std::unique_ptr<Engine> gpu = MakeEngine("vulkan", file, options);
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  const int64_t vocab = cpu->config().vocab_size;
  const std::vector<int32_t> prompt = SeededTokens(37, vocab, 9);
  const std::vector<int32_t> table_self = {0, 1, 2, 3};
  const std::vector<int32_t> table_imported = {12, 7, 9, 4};

  ASSERT_TRUE(cpu->Prefill({table_self, 0, 0}, prompt).ok());
  absl::StatusOr<std::vector<uint8_t>> payload =
      cpu->ExportKv({table_self, 0, 0}, 37, kv::FullRect(cpu->kv_layout(), 37));
  ASSERT_TRUE(payload.ok()) << payload.status();
  ASSERT_TRUE(
      gpu->ImportKv({table_imported, 0, 0}, 37, kv::FullRect(gpu->kv_layout(), 37), *payload).ok());
  absl::StatusOr<std::vector<float>> logits = gpu->Prefill({table_self, 0, 0}, prompt);
  ASSERT_TRUE(logits.ok()) << logits.status();

  int32_t token = ArgMaxRows(*logits, vocab)[0];
  for (int64_t step = 0; step < 5; ++step) {
    const DecodeItem self{{table_self, 37 + step, 0}, token};
    const DecodeItem imported{{table_imported, 37 + step, 0}, token};
    absl::StatusOr<std::vector<float>> want = gpu->DecodeStep({&self, 1});
    absl::StatusOr<std::vector<float>> got = gpu->DecodeStep({&imported, 1});
    ASSERT_TRUE(want.ok() && got.ok());
    EXPECT_TRUE(LogitsNear(*got, *want, 2e-3f, 2e-3f)) << "decode step " << step;
    token = ArgMaxRows(*want, vocab)[0];
  }
}

class KvTransferErrorsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(KvTransferErrorsTest, BadCallsAreInvalidArgumentAndWriteNothing) {
  if (GetParam() == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 11);
  ASSERT_NE(file, nullptr);
  std::unique_ptr<Engine> e =
      MakeEngine(GetParam(), file, TestOptions(kv::CacheDtype::kFp8E4M3, 8, 2));
  ASSERT_NE(e, nullptr);
  const std::vector<int32_t> table = {4, 1, 6};
  const std::vector<int32_t> other = {0, 2, 3};
  ASSERT_TRUE(e->Prefill({table, 0, 0}, SeededTokens(37, e->config().vocab_size, 1)).ok());
  ASSERT_TRUE(e->Prefill({other, 0, 1}, SeededTokens(40, e->config().vocab_size, 2)).ok());
  const kv::KvRect all = kv::FullRect(e->kv_layout(), 37);
  absl::StatusOr<std::vector<uint8_t>> good = e->ExportKv({table, 0, 0}, 37, all);
  ASSERT_TRUE(good.ok()) << good.status();
  // 2 layers x (K, V) x (2 sealed blocks of 2 x 256 E4M3 + 2 scales, one f16 tail block).
  ASSERT_EQ(good->size(), 2u * 2u * (2u * 520u + 1024u));
  absl::StatusOr<std::vector<uint8_t>> before = e->ExportKv({other, 0, 1}, 40, all);
  ASSERT_TRUE(before.ok());

  auto expect_invalid = [](const absl::Status& status, const std::string& message) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(message));
  };
  std::vector<uint8_t> shorter(good->begin(), good->end() - 4);
  expect_invalid(e->ImportKv({other, 0, 1}, 37, all, shorter),
                 "8252 bytes, but layers [0, 2) x blocks [0, 3) of 37 tokens take 8256");
  expect_invalid(e->ImportKv({other, 0, 1}, 37, kv::KvRect{0, 2, 0, 4}, *good),
                 "block_end 4 outside [1, 3]");
  expect_invalid(e->ExportKv({table, 0, 0}, 37, kv::KvRect{0, 3, 0, 3}).status(),
                 "layer_end 3 outside [1, 2]");
  expect_invalid(e->ImportKv({{0, 2}, 0, 1}, 37, all, *good),
                 "the block table has 2 blocks; blocks [0, 3) need 3");
  expect_invalid(e->ExportKv({{4, 1, 9}, 0, 0}, 37, all).status(),
                 "block table entry 2 = 9 is outside the pool [0, 8)");
  expect_invalid(e->ImportKv({other, 0, 2}, 37, all, *good), "tail slot 2 is outside [0, 2)");
  expect_invalid(e->ExportKv({table, 0, -1}, 37, all).status(), "tail slot -1 is outside [0, 2)");
  std::vector<uint8_t> junk = *good;
  junk.back() = 0x3c;  // slot 15 of the last partial block, past the 5 committed positions
  expect_invalid(e->ImportKv({other, 0, 1}, 37, all, junk),
                 "layer 1 V block 2 head 1 has nonzero data in slot 15");

  absl::StatusOr<std::vector<uint8_t>> after = e->ExportKv({other, 0, 1}, 40, all);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, *before);
}

INSTANTIATE_TEST_SUITE_P(Backends, KvTransferErrorsTest, ::testing::Values("cpu", "vulkan"));

}  // namespace
}  // namespace duet::testing
