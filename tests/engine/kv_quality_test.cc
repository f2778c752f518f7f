// Real weights and KV-cache quality:
//   - stories260K on Vulkan with an F32 cache reproduces llama2.c's 200-token greedy story
//     exactly (the CPU engine too);
//   - FP8 KV against F32 KV, teacher-forced over the same 200 tokens (stories260K's reference
//     story; random tokens on a synthetic head_dim-64 model): top-1 agreement and the largest
//     logit error are reported (RecordProperty and stdout) and bounded. docs/numerics.md
//     records the bounds and the measured values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/model/tokenizer.h"
#include "tests/engine/engine_test_util.h"

namespace duet::testing {
namespace {

// llama2.c's `run stories260K.bin -z tok512.bin -t 0 -n 200`, after the first token's space.
constexpr char kExpectedStory[] =
    R"(Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, "Lily, let's go to the park." Lily was sad and didn't know what to do. She said, "I want to play with your ball, but I can't find it."
Lily was sad and didn't know what to do. She said, "I'm sorry, Lily. I didn't know what to do."
Lily didn't want to help her mom, so she)";

constexpr int kStoryTokens = 200;

// Greedy from `first` (at position 0): prefill one token, then DecodeStepGreedy.
std::vector<int32_t> Greedy(Engine& engine, int32_t first, int n) {
  const std::vector<int32_t> table = BlockRange(0, 16);
  absl::StatusOr<std::vector<float>> logits = engine.Prefill({table, 0, 0}, {first});
  EXPECT_TRUE(logits.ok()) << logits.status();
  if (!logits.ok()) return {};
  std::vector<int32_t> out = {ArgMaxRows(*logits, engine.config().vocab_size)[0]};
  for (int i = 1; i < n; ++i) {
    const DecodeItem item{{table, i, 0}, out.back()};
    absl::StatusOr<std::vector<int32_t>> next = engine.DecodeStepGreedy({&item, 1});
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok()) return out;
    out.push_back((*next)[0]);
  }
  return out;
}

class Stories260kTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Stories260kTest, F32CacheGreedyReproducesTheReferenceStory) {
  std::shared_ptr<const GgufFile> file = Stories260k();
  if (file == nullptr) GTEST_SKIP() << "no " << Stories260kPath() << " (../shared is absent)";
  if (GetParam() == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(*file);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::unique_ptr<Engine> engine =
      MakeEngine(GetParam(), file, TestOptions(kv::CacheDtype::kF32, 16, 1));
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> tokens = Greedy(*engine, (*tokenizer)->bos_id(), kStoryTokens);
  const std::string text = (*tokenizer)->Decode(tokens);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text[0], ' ');
  EXPECT_EQ(text.substr(1), kExpectedStory);
}

INSTANTIATE_TEST_SUITE_P(Backends, Stories260kTest, ::testing::Values("cpu", "vulkan"));

// Logits of every position of `tokens` [tokens.size(), vocab], teacher-forced: prefilled in
// chunks of 48 (which the cache protocol makes equal to decoding them one by one, and which
// seals FP8 blocks across chunk boundaries).
std::vector<float> TeacherForced(Engine& engine, const std::vector<int32_t>& tokens) {
  const std::vector<int32_t> table = BlockRange(0, 16);
  std::vector<float> all;
  for (size_t first = 0; first < tokens.size(); first += 48) {
    const size_t n = std::min<size_t>(48, tokens.size() - first);
    absl::StatusOr<std::vector<float>> rows = engine.Prefill(
        {table, static_cast<int64_t>(first), 0}, absl::MakeConstSpan(tokens).subspan(first, n),
        /*all_logits=*/true);
    EXPECT_TRUE(rows.ok()) << rows.status();
    if (!rows.ok()) break;
    all.insert(all.end(), rows->begin(), rows->end());
  }
  return all;
}

struct Fp8Quality {
  double top1_agreement = 0;  // fraction of positions whose argmax agrees with F32 KV
  float max_abs_error = 0;    // largest |fp8 - f32| logit
  float max_logit = 0;        // largest |f32| logit (scale of the error)
};

Fp8Quality MeasureFp8(const std::string& backend, std::shared_ptr<const GgufFile> file,
                      const std::vector<int32_t>& tokens) {
  std::unique_ptr<Engine> f32 = MakeEngine(backend, file, TestOptions(kv::CacheDtype::kF32, 16, 1));
  std::unique_ptr<Engine> fp8 =
      MakeEngine(backend, file, TestOptions(kv::CacheDtype::kFp8E4M3, 16, 1));
  if (f32 == nullptr || fp8 == nullptr) return {};
  const std::vector<float> want = TeacherForced(*f32, tokens);
  const std::vector<float> got = TeacherForced(*fp8, tokens);
  const int64_t vocab = f32->config().vocab_size;
  const std::vector<int32_t> a = ArgMaxRows(got, vocab);
  const std::vector<int32_t> b = ArgMaxRows(want, vocab);
  Fp8Quality q;
  int agree = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) agree += a[i] == b[i] ? 1 : 0;
  q.top1_agreement = static_cast<double>(agree) / static_cast<double>(tokens.size());
  const LogitsDiff d = Compare(got, want);
  q.max_abs_error = d.max_abs;
  q.max_logit = d.max_ref;
  return q;
}

void Report(const std::string& name, const Fp8Quality& q) {
  ::testing::Test::RecordProperty(name + "_top1_agreement", std::to_string(q.top1_agreement));
  ::testing::Test::RecordProperty(name + "_max_abs_logit_error", std::to_string(q.max_abs_error));
  std::printf(
      "[fp8 vs f32 KV] %s: top-1 agreement %.4f, max |logit error| %.4f (max |logit| %.2f)\n",
      name.c_str(), q.top1_agreement, q.max_abs_error, q.max_logit);
}

class Fp8QualityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "vulkan" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  }
};

TEST_P(Fp8QualityTest, Stories260k) {
  std::shared_ptr<const GgufFile> file = Stories260k();
  if (file == nullptr) GTEST_SKIP() << "no " << Stories260kPath() << " (../shared is absent)";
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(*file);
  ASSERT_TRUE(tokenizer.ok());
  // BOS and the reference story (the F32 greedy tokens), 200 positions.
  std::unique_ptr<Engine> reference =
      MakeEngine("cpu", file, TestOptions(kv::CacheDtype::kF32, 16, 1));
  ASSERT_NE(reference, nullptr);
  std::vector<int32_t> tokens = {(*tokenizer)->bos_id()};
  const std::vector<int32_t> story = Greedy(*reference, tokens[0], kStoryTokens - 1);
  tokens.insert(tokens.end(), story.begin(), story.end());
  const Fp8Quality q = MeasureFp8(GetParam(), file, tokens);
  Report("stories260k_" + GetParam(), q);
  // Measured 0.985 and 1.28 (logits up to 22): 3 of 200 positions flip at near-ties.
  EXPECT_GE(q.top1_agreement, 0.95);
  EXPECT_LE(q.max_abs_error, 2.5f);
}

TEST_P(Fp8QualityTest, SyntheticHeadDim64) {
  std::shared_ptr<const GgufFile> file = SyntheticFile(SmallShape(64), GgmlType::kQ8_0, 5);
  ASSERT_NE(file, nullptr);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 200; ++i) tokens.push_back(static_cast<int32_t>(3 + (i * 97 + 11) % 257));
  const Fp8Quality q = MeasureFp8(GetParam(), file, tokens);
  Report("synthetic_hd64_" + GetParam(), q);
  // Measured 1.0 and 0.114 (logits up to 8.8).
  EXPECT_GE(q.top1_agreement, 0.95);
  EXPECT_LE(q.max_abs_error, 0.3f);
}

INSTANTIATE_TEST_SUITE_P(Backends, Fp8QualityTest, ::testing::Values("cpu", "vulkan"));

}  // namespace
}  // namespace duet::testing
