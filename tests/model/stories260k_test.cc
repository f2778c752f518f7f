// End-to-end check of the CPU reference on real weights: Karpathy's TinyStories 260K model
// must reproduce llama2.c's greedy 200-token story exactly (see ../shared/models/README.md).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/model/cpu_forward.h"
#include "common/model/gguf.h"
#include "common/model/tokenizer.h"
#include "gtest/gtest.h"

namespace duet {
namespace {

// llama2.c's `run stories260K.bin -z tok512.bin -t 0 -n 200` output, after the first token's
// leading space.
constexpr char kExpectedStory[] =
    R"(Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, "Lily, let's go to the park." Lily was sad and didn't know what to do. She said, "I want to play with your ball, but I can't find it."
Lily was sad and didn't know what to do. She said, "I'm sorry, Lily. I didn't know what to do."
Lily didn't want to help her mom, so she)";

constexpr int kNumGeneratedTokens = 200;

std::string ModelPath() { return std::string(DUET_SHARED_DIR) + "/models/stories260K.gguf"; }

TEST(Stories260kTest, GreedyDecodingMatchesReferenceText) {
  const std::string path = ModelPath();
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << "stories260K.gguf not found at " << path
                 << " (set DUET_SHARED_DIR to the directory holding models/)";
  }
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::shared_ptr<const GgufFile> shared_file = std::move(*file);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(*shared_file);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<std::unique_ptr<CpuModel>> model = CpuModel::Load(shared_file);
  ASSERT_TRUE(model.ok()) << model.status();

  const ModelConfig& config = (*model)->config();
  EXPECT_EQ(config.hidden_dim, 64);
  EXPECT_EQ(config.num_layers, 5);
  EXPECT_EQ(config.num_heads, 8);
  EXPECT_EQ(config.num_kv_heads, 4);
  EXPECT_EQ(config.vocab_size, 512);

  // Position 0 holds BOS; each step feeds the previous token and takes the argmax (the first
  // index on ties), so 200 steps fill positions 0..199 and yield 200 tokens.
  CpuKvCache cache(config, kNumGeneratedTokens);
  int32_t token = (*tokenizer)->bos_id();
  ASSERT_GE(token, 0);
  std::vector<int32_t> generated;
  const auto start = std::chrono::steady_clock::now();
  for (int step = 0; step < kNumGeneratedTokens; ++step) {
    absl::StatusOr<std::vector<float>> logits = (*model)->Forward({token}, &cache);
    ASSERT_TRUE(logits.ok()) << logits.status();
    token =
        static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) - logits->begin());
    generated.push_back(token);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  RecordProperty("tokens_per_second", std::to_string(kNumGeneratedTokens / seconds));

  const std::string text = (*tokenizer)->Decode(generated);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text[0], ' ');
  EXPECT_EQ(text.substr(1), kExpectedStory);
}

}  // namespace
}  // namespace duet
