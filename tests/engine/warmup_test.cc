// duet::WarmUp (run by nodes before they serve): it succeeds on both backends and every KV
// dtype, also with pools too small for some of its sequences, and leaves nothing behind -- a
// request run afterwards gives exactly the logits and tokens of a fresh engine.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "common/engine/engine.h"
#include "common/model/sampling.h"
#include "tests/engine/engine_test_util.h"

namespace duet::testing {
namespace {

using WarmCase = std::tuple<std::string, kv::CacheDtype>;

std::string WarmCaseName(const ::testing::TestParamInfo<WarmCase>& info) {
  return std::get<0>(info.param) + "_" + std::string(kv::CacheDtypeName(std::get<1>(info.param)));
}

// Greedy tokens of a prompt on blocks {3, 1, 8} and tail slot 1, plus the prefill logits.
std::vector<float> RunRequest(Engine& engine, std::vector<int32_t>* tokens) {
  const std::vector<int32_t> table = {3, 1, 8};
  const int64_t vocab = engine.config().vocab_size;
  const std::vector<int32_t> prompt = SeededTokens(21, vocab, 9);
  const int32_t slot = engine.kv_layout().dtype == kv::CacheDtype::kFp8E4M3 ? 1 : -1;
  absl::StatusOr<std::vector<float>> logits = engine.Prefill({table, 0, slot}, prompt);
  EXPECT_TRUE(logits.ok()) << logits.status();
  if (!logits.ok()) return {};
  int32_t token = ArgMax(*logits);
  for (int64_t pos = 21; pos < 30; ++pos) {
    tokens->push_back(token);
    const DecodeItem item{{table, pos, slot}, token};
    absl::StatusOr<std::vector<int32_t>> next = engine.DecodeStepGreedy({&item, 1});
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok()) break;
    token = (*next)[0];
  }
  return *logits;
}

// Forwards every call to an engine and records the row counts of the verify steps.
class RecordingEngine : public Engine {
 public:
  explicit RecordingEngine(Engine* inner) : inner_(inner) {}
  const ModelConfig& config() const override { return inner_->config(); }
  const kv::KvLayout& kv_layout() const override { return inner_->kv_layout(); }
  std::string backend_name() const override { return inner_->backend_name(); }
  absl::StatusOr<std::vector<float>> Prefill(const SequenceRef& seq,
                                             absl::Span<const int32_t> tokens, bool all_logits,
                                             const PrefillObserver* observer) override {
    return inner_->Prefill(seq, tokens, all_logits, observer);
  }
  absl::StatusOr<std::vector<float>> DecodeStep(absl::Span<const DecodeItem> batch) override {
    return inner_->DecodeStep(batch);
  }
  absl::StatusOr<std::vector<int32_t>> DecodeStepGreedy(
      absl::Span<const DecodeItem> batch) override {
    return inner_->DecodeStepGreedy(batch);
  }
  absl::StatusOr<std::vector<float>> VerifyBatch(absl::Span<const VerifyItem> batch) override {
    for (const VerifyItem& item : batch)
      sampled_rows.push_back(static_cast<int64_t>(item.tokens.size()));
    return inner_->VerifyBatch(batch);
  }
  absl::StatusOr<std::vector<int32_t>> VerifyBatchGreedy(
      absl::Span<const VerifyItem> batch) override {
    for (const VerifyItem& item : batch)
      greedy_rows.push_back(static_cast<int64_t>(item.tokens.size()));
    return inner_->VerifyBatchGreedy(batch);
  }
  absl::Status CommitBatch(absl::Span<const CommitItem> batch) override {
    for (const CommitItem& item : batch) committed.push_back(item.accepted);
    return inner_->CommitBatch(batch);
  }
  absl::StatusOr<std::vector<uint8_t>> ExportKv(const SequenceRef& seq, int64_t num_tokens,
                                                const kv::KvRect& rect) override {
    return inner_->ExportKv(seq, num_tokens, rect);
  }
  absl::Status ImportKv(const SequenceRef& seq, int64_t num_tokens, const kv::KvRect& rect,
                        absl::Span<const uint8_t> payload) override {
    return inner_->ImportKv(seq, num_tokens, rect, payload);
  }

  std::vector<int64_t> greedy_rows, sampled_rows, committed;

 private:
  Engine* inner_;
};

class WarmUpTest : public ::testing::TestWithParam<WarmCase> {};

TEST_P(WarmUpTest, LeavesNoTrace) {
  const auto& [backend, dtype] = GetParam();
  if (backend != "cpu" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 17);
  std::unique_ptr<Engine> warm = MakeEngine(backend, file, TestOptions(dtype, 64, 8));
  std::unique_ptr<Engine> fresh = MakeEngine(backend, file, TestOptions(dtype, 64, 8));
  ASSERT_NE(warm, nullptr);
  ASSERT_NE(fresh, nullptr);
  ASSERT_TRUE(WarmUp(*warm, /*max_verify_rows=*/5).ok());
  std::vector<int32_t> warm_tokens, fresh_tokens;
  EXPECT_EQ(RunRequest(*warm, &warm_tokens), RunRequest(*fresh, &fresh_tokens));
  EXPECT_EQ(warm_tokens, fresh_tokens);
  EXPECT_EQ(warm_tokens.size(), 9u);
}

TEST_P(WarmUpTest, SmallPoolsAreFine) {
  const auto& [backend, dtype] = GetParam();
  if (backend != "cpu" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 17);
  for (const auto& [blocks, seqs] : {std::pair<int64_t, int64_t>{1, 1}, {4, 1}, {6, 2}}) {
    std::unique_ptr<Engine> engine = MakeEngine(backend, file, TestOptions(dtype, blocks, seqs));
    ASSERT_NE(engine, nullptr);
    EXPECT_TRUE(WarmUp(*engine).ok()) << blocks << " blocks, " << seqs << " sequences";
    EXPECT_TRUE(WarmUp(*engine, 12).ok()) << blocks << " blocks, " << seqs << " sequences";
  }
}

// A node that speculates builds its verify steps too -- every row count up to its most drafted
// tokens plus one, greedy and sampled, and a commit -- also with room for one sequence only.
TEST_P(WarmUpTest, WarmsEveryVerifyRowCount) {
  const auto& [backend, dtype] = GetParam();
  if (backend != "cpu" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  std::shared_ptr<const GgufFile> file = SyntheticFile(TinyShape(), GgmlType::kQ8_0, 17);
  for (int64_t seqs : {1, 8}) {
    std::unique_ptr<Engine> engine = MakeEngine(backend, file, TestOptions(dtype, 64, seqs));
    ASSERT_NE(engine, nullptr);
    RecordingEngine recording(engine.get());
    ASSERT_TRUE(WarmUp(recording, 5).ok()) << seqs << " sequences";
    EXPECT_EQ(recording.greedy_rows, (std::vector<int64_t>{2, 3, 4, 5})) << seqs;
    EXPECT_EQ(recording.sampled_rows, (std::vector<int64_t>{5})) << seqs;
    EXPECT_EQ(recording.committed, (std::vector<int64_t>{5})) << seqs;
    RecordingEngine plain(engine.get());
    ASSERT_TRUE(WarmUp(plain).ok());
    EXPECT_TRUE(plain.greedy_rows.empty() && plain.sampled_rows.empty() && plain.committed.empty());
  }
}

INSTANTIATE_TEST_SUITE_P(All, WarmUpTest,
                         ::testing::Combine(::testing::Values("cpu", "vulkan"),
                                            ::testing::Values(kv::CacheDtype::kF32,
                                                              kv::CacheDtype::kF16,
                                                              kv::CacheDtype::kFp8E4M3)),
                         WarmCaseName);

}  // namespace
}  // namespace duet::testing
