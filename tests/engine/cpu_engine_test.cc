// The CPU engine against CpuModel (bit-identical with an F32 cache), the Verify / Commit
// protocol on both backends, and the KV pool's sizing.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/engine/engine.h"
#include "common/kv/kv_payload.h"
#include "common/model/cpu_forward.h"
#include "tests/engine/engine_test_util.h"

namespace duet::testing {
namespace {

std::vector<int32_t> Prompt(int64_t n, int64_t vocab, int32_t salt) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i)
    t.push_back(static_cast<int32_t>((i * 37 + salt * 11 + 5) % vocab));
  return t;
}

TEST(CpuEngineTest, F32CacheEqualsCpuModelBitForBit) {
  for (GgmlType type : {GgmlType::kF32, GgmlType::kQ4_0}) {
    std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), type, 3);
    ASSERT_NE(file, nullptr);
    absl::StatusOr<std::unique_ptr<CpuModel>> model = CpuModel::Load(file);
    ASSERT_TRUE(model.ok()) << model.status();
    std::unique_ptr<Engine> engine = MakeEngine("cpu", file, TestOptions(kv::CacheDtype::kF32));
    ASSERT_NE(engine, nullptr);
    const int64_t vocab = engine->config().vocab_size;
    const std::vector<int32_t> prompt = Prompt(29, vocab, 1);

    CpuKvCache cache((*model)->config(), 64);
    absl::StatusOr<std::vector<float>> want = (*model)->Forward(prompt, &cache, true);
    ASSERT_TRUE(want.ok()) << want.status();
    // The engine in two chunks (13 + 16) over blocks in reverse order.
    const std::vector<int32_t> table = {9, 3, 7, 1};
    std::vector<float> got;
    for (auto [first, n] : {std::pair<int64_t, int64_t>{0, 13}, {13, 16}}) {
      absl::StatusOr<std::vector<float>> part = engine->Prefill(
          {table, first, 0},
          absl::MakeConstSpan(prompt).subspan(static_cast<size_t>(first), static_cast<size_t>(n)),
          true);
      ASSERT_TRUE(part.ok()) << part.status();
      got.insert(got.end(), part->begin(), part->end());
    }
    EXPECT_EQ(got, *want);

    int32_t token = ArgMaxRows(*want, vocab).back();
    for (int64_t pos = 29; pos < 40; ++pos) {
      absl::StatusOr<std::vector<float>> w = (*model)->Forward({token}, &cache);
      const DecodeItem item{{table, pos, 0}, token};
      absl::StatusOr<std::vector<float>> g = engine->DecodeStep({&item, 1});
      ASSERT_TRUE(w.ok() && g.ok());
      ASSERT_EQ(*g, *w) << "position " << pos;
      token = ArgMaxRows(*w, vocab)[0];
    }
  }
}

// Decodes the same tokens on sequences `a` and `b` (one step for both) at positions [from, to)
// and expects the same logits: bit for bit on the CPU, within the Vulkan tolerance otherwise.
void ExpectSameContinuation(Engine& engine, const std::string& backend,
                            const std::vector<int32_t>& table_a, int32_t slot_a,
                            const std::vector<int32_t>& table_b, int32_t slot_b, int64_t from,
                            int64_t to) {
  const int64_t vocab = engine.config().vocab_size;
  for (int64_t pos = from; pos < to; ++pos) {
    const int32_t token = static_cast<int32_t>(pos * 7 % vocab);
    const DecodeItem items[] = {{{table_a, pos, slot_a}, token}, {{table_b, pos, slot_b}, token}};
    absl::StatusOr<std::vector<float>> rows = engine.DecodeStep(items);
    ASSERT_TRUE(rows.ok()) << rows.status();
    const std::vector<float> a(rows->begin(), rows->begin() + vocab);
    const std::vector<float> b(rows->begin() + vocab, rows->end());
    if (backend == "cpu") {
      EXPECT_EQ(a, b) << "position " << pos;
    } else {
      EXPECT_TRUE(LogitsNear(a, b, 2e-2f, 1e-2f)) << "position " << pos;
    }
  }
}

// Verify(k drafts) then Commit(a) leaves the cache as if the a tokens had been decoded one by
// one: later steps see the same keys. On the CPU this holds bit for bit for every dtype.
class VerifyCommitTest : public ::testing::TestWithParam<std::tuple<std::string, kv::CacheDtype>> {
};

TEST_P(VerifyCommitTest, CommittingAPrefixEqualsDecodingIt) {
  const auto& [backend, dtype] = GetParam();
  if (backend == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 5);
  ASSERT_NE(file, nullptr);
  std::unique_ptr<Engine> engine = MakeEngine(backend, file, TestOptions(dtype, 16, 2));
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  const std::vector<int32_t> prompt = Prompt(14, vocab, 2);
  const std::vector<int32_t> drafts = {17, 99, 5, 200};   // positions 14..17 (crosses 16)
  const std::vector<int32_t> table_a = BlockRange(0, 4);  // speculative path
  const std::vector<int32_t> table_b = BlockRange(4, 4);  // reference path
  ASSERT_TRUE(engine->Prefill({table_a, 0, 0}, prompt).ok());
  ASSERT_TRUE(engine->Prefill({table_b, 0, 1}, prompt).ok());

  absl::StatusOr<std::vector<float>> verify = engine->Verify({table_a, 14, 0}, drafts);
  ASSERT_TRUE(verify.ok()) << verify.status();
  ASSERT_EQ(verify->size(), 4 * static_cast<size_t>(vocab));
  // The reference decodes drafts[0..2] one at a time; its logits are the Verify's rows.
  std::vector<float> reference;
  for (int64_t i = 0; i < 3; ++i) {
    const DecodeItem item{{table_b, 14 + i, 1}, drafts[static_cast<size_t>(i)]};
    absl::StatusOr<std::vector<float>> row = engine->DecodeStep({&item, 1});
    ASSERT_TRUE(row.ok()) << row.status();
    reference.insert(reference.end(), row->begin(), row->end());
  }
  const std::vector<float> verify_rows(verify->begin(), verify->begin() + 3 * vocab);
  if (backend == "cpu") {
    EXPECT_EQ(verify_rows, reference);
  } else {
    EXPECT_TRUE(LogitsNear(verify_rows, reference, 2e-2f, 1e-2f));
  }

  // Accept 3 (positions 14, 15, 16: completes block 0), then both continue identically.
  EXPECT_EQ(engine->Commit({table_a, 14, 0}, 3).code(), absl::StatusCode::kOk);
  ExpectSameContinuation(*engine, backend, table_a, 0, table_b, 1, 17, 21);
}

TEST_P(VerifyCommitTest, CommitNeedsAMatchingVerify) {
  const auto& [backend, dtype] = GetParam();
  if (backend == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kF16, 5);
  std::unique_ptr<Engine> engine = MakeEngine(backend, file, TestOptions(dtype, 16, 2));
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> table = BlockRange(0, 4);
  const std::vector<int32_t> other = BlockRange(4, 4);
  ASSERT_TRUE(engine->Prefill({table, 0, 0}, {1, 2, 3, 4, 5}).ok());
  EXPECT_EQ(engine->Commit({table, 5, 0}, 1).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(engine->Verify({table, 5, 0}, {6, 7, 8}).ok());
  EXPECT_EQ(engine->Commit({table, 5, 0}, 4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Commit({table, 4, 0}, 1).code(), absl::StatusCode::kFailedPrecondition);
  // Another sequence may run in between.
  ASSERT_TRUE(engine->Prefill({other, 0, 1}, {9, 9}).ok());
  EXPECT_TRUE(engine->Commit({table, 5, 0}, 2).ok());
  // Committed: a second Commit has nothing pending.
  EXPECT_EQ(engine->Commit({table, 5, 0}, 2).code(), absl::StatusCode::kFailedPrecondition);
  // A decode step of the sequence ends its pending Verify.
  ASSERT_TRUE(engine->Verify({table, 7, 0}, {1, 2}).ok());
  const DecodeItem item{{table, 7, 0}, 3};
  ASSERT_TRUE(engine->DecodeStep({&item, 1}).ok());
  EXPECT_EQ(engine->Commit({table, 7, 0}, 1).code(), absl::StatusCode::kFailedPrecondition);
}

// ExportKv sees a commit as soon as Commit returns, and an import into the committed blocks
// (freed and handed to another sequence) is not overwritten by the commit afterwards: the
// Vulkan engine queues a commit until its next call that touches the KV, and these two calls
// must run it first.
TEST_P(VerifyCommitTest, ExportSeesACommitAndAnImportIsNotOverwrittenByIt) {
  const auto& [backend, dtype] = GetParam();
  if (backend == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 5);
  ASSERT_NE(file, nullptr);
  std::unique_ptr<Engine> engine = MakeEngine(backend, file, TestOptions(dtype, 16, 4));
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  const std::vector<int32_t> table_a = BlockRange(0, 4);
  const std::vector<int32_t> table_b = BlockRange(4, 4);
  const std::vector<int32_t> table_c = BlockRange(8, 4);
  const std::vector<int32_t> table_d = BlockRange(12, 4);
  for (const auto& [table, slot] : {std::pair{&table_a, 0}, std::pair{&table_b, 1}}) {
    ASSERT_TRUE(engine->Prefill({*table, 0, slot}, Prompt(14, vocab, 2)).ok());
  }
  ASSERT_TRUE(engine->Prefill({table_c, 0, 2}, Prompt(17, vocab, 5)).ok());
  ASSERT_TRUE(engine->Prefill({table_d, 0, 3}, Prompt(3, vocab, 7)).ok());
  const kv::KvRect rect = kv::FullRect(engine->kv_layout(), 17);
  absl::StatusOr<std::vector<uint8_t>> from_c = engine->ExportKv({table_c, 0, 2}, 17, rect);
  ASSERT_TRUE(from_c.ok()) << from_c.status();
  const DecodeItem other{{table_d, 3, 3}, 1};

  // A commits positions 14..16 (completing block 0, starting block 1) and is exported at once;
  // a step of another sequence (which runs anything still queued) must not change A's KV.
  ASSERT_TRUE(engine->Verify({table_a, 14, 0}, {17, 99, 5, 200}).ok());
  ASSERT_TRUE(engine->Commit({table_a, 14, 0}, 3).ok());
  absl::StatusOr<std::vector<uint8_t>> first = engine->ExportKv({table_a, 0, 0}, 17, rect);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(engine->DecodeStep({&other, 1}).ok());
  absl::StatusOr<std::vector<uint8_t>> second = engine->ExportKv({table_a, 0, 0}, 17, rect);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(*first == *second) << "ExportKv ran before the commit it follows";

  // B commits the same way, then its blocks take C's KV: exporting them gives C's bytes.
  ASSERT_TRUE(engine->Verify({table_b, 14, 1}, {17, 99, 5, 200}).ok());
  ASSERT_TRUE(engine->Commit({table_b, 14, 1}, 3).ok());
  ASSERT_TRUE(engine->ImportKv({table_b, 0, 1}, 17, rect, *from_c).ok());
  ASSERT_TRUE(engine->DecodeStep({&other, 1}).ok());
  absl::StatusOr<std::vector<uint8_t>> got = engine->ExportKv({table_b, 0, 1}, 17, rect);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(*got == *from_c) << "a commit queued before ImportKv overwrote the import";
}

// A VerifyBatch of sequences with different draft counts (k = 0 included) in one pass gives
// each sequence the logits it would get alone, and CommitBatch of different accepted counts
// leaves each cache as if the accepted tokens had been decoded one by one.
TEST_P(VerifyCommitTest, BatchedVerifyAndCommitEqualDecodingEachSequence) {
  const auto& [backend, dtype] = GetParam();
  if (backend == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 9);
  ASSERT_NE(file, nullptr);
  std::unique_ptr<Engine> engine = MakeEngine(backend, file, TestOptions(dtype, 32, 6));
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  // Three sequences (prompt lengths 14, 9, 31), each with a twin decoded one token at a time.
  const std::vector<int64_t> lengths = {14, 9, 31};
  const std::vector<std::vector<int32_t>> drafts = {{17, 99, 5, 200}, {}, {3, 1, 4}};
  const std::vector<int64_t> accepted = {3, 1, 4};  // of k + 1 positions: 5, 1, 4
  std::vector<std::vector<int32_t>> tables, twins;
  for (int32_t i = 0; i < 3; ++i) {
    tables.push_back(BlockRange(8 * i, 4));
    twins.push_back(BlockRange(8 * i + 4, 4));
    const std::vector<int32_t> prompt = Prompt(lengths[static_cast<size_t>(i)], vocab, i);
    ASSERT_TRUE(engine->Prefill({tables.back(), 0, i}, prompt).ok());
    ASSERT_TRUE(engine->Prefill({twins.back(), 0, 3 + i}, prompt).ok());
  }
  std::vector<std::vector<int32_t>> tokens;
  std::vector<VerifyItem> items;
  for (size_t i = 0; i < 3; ++i) {
    tokens.push_back({static_cast<int32_t>(7 * i + 1)});
    tokens.back().insert(tokens.back().end(), drafts[i].begin(), drafts[i].end());
  }
  for (size_t i = 0; i < 3; ++i) {
    items.push_back({{tables[i], lengths[i], static_cast<int32_t>(i)}, tokens[i]});
  }
  absl::StatusOr<std::vector<float>> verify = engine->VerifyBatch(items);
  ASSERT_TRUE(verify.ok()) << verify.status();
  ASSERT_EQ(verify->size(), static_cast<size_t>((5 + 1 + 4) * vocab));
  absl::StatusOr<std::vector<int32_t>> greedy = engine->VerifyBatchGreedy(items);
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  EXPECT_EQ(*greedy, ArgMaxRows(*verify, vocab));

  // The twins decode each verified token alone; row r of the batch is its logits.
  size_t row = 0;
  for (size_t i = 0; i < 3; ++i) {
    for (size_t j = 0; j < tokens[i].size(); ++j, ++row) {
      const DecodeItem item{{twins[i], lengths[i] + static_cast<int64_t>(j),
                             static_cast<int32_t>(3 + i)},
                            tokens[i][j]};
      absl::StatusOr<std::vector<float>> want = engine->DecodeStep({&item, 1});
      ASSERT_TRUE(want.ok()) << want.status();
      const std::vector<float> got(verify->begin() + static_cast<int64_t>(row) * vocab,
                                   verify->begin() + static_cast<int64_t>(row + 1) * vocab);
      if (backend == "cpu") {
        EXPECT_EQ(got, *want) << "sequence " << i << " row " << j;
      } else {
        EXPECT_TRUE(LogitsNear(got, *want, 2e-2f, 1e-2f)) << "sequence " << i << " row " << j;
      }
    }
  }
  // Each twin has now committed all of its k + 1 tokens; roll it back to the accepted count by
  // continuing both from there with the same tokens.
  std::vector<CommitItem> commits;
  for (size_t i = 0; i < 3; ++i) {
    commits.push_back({{tables[i], lengths[i], static_cast<int32_t>(i)}, accepted[i]});
  }
  // A bad item leaves every Verify pending.
  std::vector<CommitItem> bad = commits;
  bad[2].accepted = 6;
  EXPECT_EQ(engine->CommitBatch(bad).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(engine->CommitBatch(commits).ok());
  for (int64_t step = 0; step < 3; ++step) {
    std::vector<DecodeItem> batch;
    for (size_t i = 0; i < 3; ++i) {
      const int64_t pos = lengths[i] + accepted[i] + step;
      const int32_t token = static_cast<int32_t>((pos * 5 + 3) % vocab);
      batch.push_back({{tables[i], pos, static_cast<int32_t>(i)}, token});
      batch.push_back({{twins[i], pos, static_cast<int32_t>(3 + i)}, token});
    }
    absl::StatusOr<std::vector<float>> rows = engine->DecodeStep(batch);
    ASSERT_TRUE(rows.ok()) << rows.status();
    for (size_t i = 0; i < 3; ++i) {
      const std::vector<float> a(rows->begin() + static_cast<int64_t>(2 * i) * vocab,
                                 rows->begin() + static_cast<int64_t>(2 * i + 1) * vocab);
      const std::vector<float> b(rows->begin() + static_cast<int64_t>(2 * i + 1) * vocab,
                                 rows->begin() + static_cast<int64_t>(2 * i + 2) * vocab);
      if (backend == "cpu") {
        EXPECT_EQ(a, b) << "sequence " << i << " step " << step;
      } else {
        EXPECT_TRUE(LogitsNear(a, b, 2e-2f, 1e-2f)) << "sequence " << i << " step " << step;
      }
    }
  }
}

// A Verify left pending keeps its rows while other sequences verify and commit many times (the
// Vulkan engine reuses the buffers that hold verified rows; one still pending is never handed
// out): committing it afterwards equals decoding its tokens one by one.
TEST_P(VerifyCommitTest, APendingVerifyKeepsItsRowsWhileOthersVerifyAndCommit) {
  const auto& [backend, dtype] = GetParam();
  if (backend == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 11);
  ASSERT_NE(file, nullptr);
  std::unique_ptr<Engine> engine = MakeEngine(backend, file, TestOptions(dtype, 16, 3));
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  const std::vector<int32_t> table_a = BlockRange(0, 4);
  const std::vector<int32_t> twin = BlockRange(4, 4);
  const std::vector<int32_t> table_b = BlockRange(8, 4);
  const std::vector<int32_t> prompt = Prompt(14, vocab, 3);
  ASSERT_TRUE(engine->Prefill({table_a, 0, 0}, prompt).ok());
  ASSERT_TRUE(engine->Prefill({twin, 0, 1}, prompt).ok());
  ASSERT_TRUE(engine->Prefill({table_b, 0, 2}, Prompt(9, vocab, 4)).ok());

  const std::vector<int32_t> a_tokens = {21, 8, 133, 60};
  ASSERT_TRUE(engine->Verify({table_a, 14, 0}, a_tokens).ok());
  // B verifies 1 to 6 rows (smaller and larger than A's 4) and commits some, 8 times.
  int64_t b_pos = 9;
  for (int64_t round = 0; round < 8; ++round) {
    std::vector<int32_t> b_tokens;
    for (int64_t j = 0; j <= (round * 5) % 6; ++j) {
      b_tokens.push_back(static_cast<int32_t>((round * 31 + j * 7 + 2) % vocab));
    }
    ASSERT_TRUE(engine->Verify({table_b, b_pos, 2}, b_tokens).ok()) << "round " << round;
    const int64_t accept = 1 + round % static_cast<int64_t>(b_tokens.size());
    ASSERT_TRUE(engine->Commit({table_b, b_pos, 2}, accept).ok()) << "round " << round;
    b_pos += accept;
  }
  ASSERT_LE(b_pos, 64);
  ASSERT_TRUE(engine->Commit({table_a, 14, 0}, 3).ok());
  for (int64_t i = 0; i < 3; ++i) {
    const DecodeItem item{{twin, 14 + i, 1}, a_tokens[static_cast<size_t>(i)]};
    ASSERT_TRUE(engine->DecodeStep({&item, 1}).ok());
  }
  ExpectSameContinuation(*engine, backend, table_a, 0, twin, 1, 17, 20);
}

INSTANTIATE_TEST_SUITE_P(Backends, VerifyCommitTest,
                         ::testing::Combine(::testing::Values("cpu", "vulkan"),
                                            ::testing::Values(kv::CacheDtype::kF32,
                                                              kv::CacheDtype::kF16,
                                                              kv::CacheDtype::kFp8E4M3)),
                         BackendDtypeName);

// An FP8 pool of the same bytes holds >= 1.9x the tokens of an F16 pool (data + scales).
TEST(KvPoolSizingTest, Fp8HoldsAtLeast1p9xTheTokensOfF16) {
  for (const ModelShape& shape : {TinyShape(), SmallShape(64), SmallShape(128)}) {
    std::shared_ptr<const GgufFile> file = SyntheticFile(shape, GgmlType::kQ4_0, 1);
    ASSERT_NE(file, nullptr);
    EngineOptions options;
    options.kv_pool_bytes = int64_t{8} << 20;
    options.kv_dtype = kv::CacheDtype::kF16;
    std::unique_ptr<Engine> f16 = MakeEngine("cpu", file, options);
    options.kv_dtype = kv::CacheDtype::kFp8E4M3;
    std::unique_ptr<Engine> fp8 = MakeEngine("cpu", file, options);
    ASSERT_NE(f16, nullptr);
    ASSERT_NE(fp8, nullptr);
    EXPECT_LE(fp8->kv_layout().pool_bytes(), options.kv_pool_bytes);
    EXPECT_LE(f16->kv_layout().pool_bytes(), options.kv_pool_bytes);
    const double ratio = static_cast<double>(fp8->kv_layout().token_capacity()) /
                         static_cast<double>(f16->kv_layout().token_capacity());
    EXPECT_GE(ratio, 1.9) << shape.name;
    std::printf("[%s] fp8 / f16 tokens in %lld bytes: %lld / %lld = %.3f\n", shape.name.c_str(),
                static_cast<long long>(options.kv_pool_bytes),
                static_cast<long long>(fp8->kv_layout().token_capacity()),
                static_cast<long long>(f16->kv_layout().token_capacity()), ratio);
  }
}

}  // namespace
}  // namespace duet::testing
