// Layer-wise prefill progress (PrefillObserver) on both backends (and Vulkan's staged copies):
// callbacks arrive in order and cover every layer of every Prefill call; the finished layers
// exported from inside the callback are the bytes an export after Prefill returns gives; logits and
// KV are bit-identical with and without an observer; the callback may do nothing else; a failing
// callback stops the Prefill with its status and leaves the engine usable.
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

// The tiny shape with 5 layers: groups of 2 make groups [0, 2), [2, 4), [4, 5).
std::shared_ptr<const GgufFile> FiveLayerFile() {
  ModelShape shape = TinyShape();
  shape.name = "tiny-5-layers";
  shape.num_layers = 5;
  return SyntheticFile(shape, GgmlType::kQ8_0, 31);
}

struct Callback {
  kv::KvRect rect;
  PrefillProgress progress;
};

using ObserverCase = std::tuple<std::string, kv::CacheDtype>;

class PrefillObserverTest : public ::testing::TestWithParam<ObserverCase> {
 protected:
  void SetUp() override {
    const auto& [backend, dtype] = GetParam();
    if (backend != "cpu" && !HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
    file_ = FiveLayerFile();
    ASSERT_NE(file_, nullptr);
    observed_ = MakeBackend(backend, file_, TestOptions(dtype, 16, 2));
    plain_ = MakeBackend(backend, file_, TestOptions(dtype, 16, 2));
    ASSERT_NE(observed_, nullptr);
    ASSERT_NE(plain_, nullptr);
  }

  std::shared_ptr<const GgufFile> file_;
  std::unique_ptr<Engine> observed_;
  std::unique_ptr<Engine> plain_;
};

TEST_P(PrefillObserverTest, CallbacksExportFinishedLayersAndChangeNothing) {
  Engine& e = *observed_;
  const int64_t vocab = e.config().vocab_size;
  const kv::KvLayout& layout = e.kv_layout();
  const std::vector<int32_t> table = {7, 2, 11, 5};
  const std::vector<int32_t> prompt = SeededTokens(37, vocab, 4);

  std::vector<Callback> calls;
  std::vector<uint8_t> streamed;  // what a prefill node would have sent, in order
  int64_t exported_layers = 0;
  PrefillObserver observer;
  observer.layers_per_group = 2;
  observer.on_layers_done = [&](const PrefillProgress& progress) -> absl::Status {
    const kv::KvRect rect{exported_layers, progress.layers_done, 0,
                          kv::NumBlocksFor(layout, progress.num_tokens)};
    calls.push_back({rect, progress});
    absl::StatusOr<std::vector<uint8_t>> bytes =
        e.ExportKv({table, 0, 0}, progress.num_tokens, rect);
    if (!bytes.ok()) return bytes.status();
    streamed.insert(streamed.end(), bytes->begin(), bytes->end());
    exported_layers = progress.layers_done == progress.num_layers ? 0 : progress.layers_done;
    // Nothing else is allowed while later layers run.
    if (progress.layers_done < progress.num_layers) {
      kv::KvRect later = rect;
      later.layer_end = progress.layers_done + 1;
      const absl::Status status = e.ExportKv({table, 0, 0}, progress.num_tokens, later).status();
      EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_THAT(std::string(status.message()), HasSubstr("layer_end"));
    }
    const DecodeItem item{{{9, 10}, 0, 1}, 5};
    EXPECT_EQ(e.DecodeStep({&item, 1}).status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(e.Prefill({{9}, 0, 1}, {5}).status().code(), absl::StatusCode::kFailedPrecondition);
    return absl::OkStatus();
  };

  // Two Prefill calls (20 + 17 positions), all logits, with and without the observer.
  std::vector<uint8_t> streamed_first;
  for (auto [begin, n] : {std::pair<int64_t, int64_t>{0, 20}, {20, 17}}) {
    SCOPED_TRACE(absl::StrCat("chunk at ", begin));
    const absl::Span<const int32_t> chunk =
        absl::MakeConstSpan(prompt).subspan(static_cast<size_t>(begin), static_cast<size_t>(n));
    calls.clear();
    streamed.clear();
    absl::StatusOr<std::vector<float>> got = e.Prefill({table, begin, 0}, chunk, true, &observer);
    absl::StatusOr<std::vector<float>> want = plain_->Prefill({table, begin, 0}, chunk, true);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(*got, *want);

    ASSERT_EQ(calls.size(), 3u);
    const int64_t done[] = {2, 4, 5};
    for (size_t i = 0; i < calls.size(); ++i) {
      EXPECT_EQ(calls[i].progress.layers_done, done[i]);
      EXPECT_EQ(calls[i].progress.num_layers, 5);
      EXPECT_EQ(calls[i].progress.num_tokens, begin + n);
    }
    // The layer-major payload of all layers is the concatenation of the streamed groups.
    const kv::KvRect all = kv::FullRect(layout, begin + n);
    absl::StatusOr<std::vector<uint8_t>> after = e.ExportKv({table, 0, 0}, begin + n, all);
    absl::StatusOr<std::vector<uint8_t>> plain = plain_->ExportKv({table, 0, 0}, begin + n, all);
    ASSERT_TRUE(after.ok() && plain.ok());
    EXPECT_EQ(streamed, *after);
    EXPECT_EQ(*after, *plain);
  }

  // And both decode the same from there.
  for (int64_t step = 0; step < 3; ++step) {
    const DecodeItem item{{table, 37 + step, 0}, static_cast<int32_t>(10 + step)};
    absl::StatusOr<std::vector<float>> got = e.DecodeStep({&item, 1});
    absl::StatusOr<std::vector<float>> want = plain_->DecodeStep({&item, 1});
    ASSERT_TRUE(got.ok() && want.ok());
    EXPECT_EQ(*got, *want) << "decode step " << step;
  }
}

TEST_P(PrefillObserverTest, GroupLargerThanTheModelIsOneCallback) {
  std::vector<PrefillProgress> seen;
  PrefillObserver observer{8, [&](const PrefillProgress& p) {
                             seen.push_back(p);
                             return absl::OkStatus();
                           }};
  const std::vector<int32_t> table = {0, 1};
  ASSERT_TRUE(observed_->Prefill({table, 0, 0}, {4, 5, 6}, false, &observer).ok());
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].layers_done, 5);
  EXPECT_EQ(seen[0].num_tokens, 3);
}

TEST_P(PrefillObserverTest, FailingCallbackStopsThePrefillAndTheEngineGoesOn) {
  Engine& e = *observed_;
  const int64_t vocab = e.config().vocab_size;
  int64_t calls = 0;
  PrefillObserver observer{1, [&](const PrefillProgress& p) {
                             ++calls;
                             return p.layers_done == 2 ? absl::UnavailableError("stream closed")
                                                       : absl::OkStatus();
                           }};
  const std::vector<int32_t> prompt = SeededTokens(21, vocab, 8);
  const absl::Status status = e.Prefill({{3, 4}, 0, 0}, prompt, false, &observer).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "stream closed");
  EXPECT_EQ(calls, 2);

  // A sequence in other blocks runs as on an engine that never saw the failure.
  const std::vector<int32_t> table = {8, 9};
  absl::StatusOr<std::vector<float>> got = e.Prefill({table, 0, 1}, prompt, true);
  absl::StatusOr<std::vector<float>> want = plain_->Prefill({table, 0, 1}, prompt, true);
  ASSERT_TRUE(got.ok() && want.ok());
  EXPECT_EQ(*got, *want);

  // Bad observers are rejected before anything runs.
  PrefillObserver zero{0, observer.on_layers_done};
  EXPECT_THAT(std::string(e.Prefill({table, 0, 1}, prompt, false, &zero).status().message()),
              HasSubstr("layers_per_group 0 must be >= 1"));
  PrefillObserver empty{1, nullptr};
  EXPECT_THAT(std::string(e.Prefill({table, 0, 1}, prompt, false, &empty).status().message()),
              HasSubstr("no on_layers_done"));
  EXPECT_EQ(calls, 2);
}

// A Vulkan Prefill longer than kMaxPrefillChunk reports each chunk's groups, num_tokens being
// the chunk's end, and still matches the unobserved run.
TEST(PrefillObserverChunksTest, VulkanReportsEveryChunk) {
  if (!HaveVulkan()) GTEST_SKIP() << "no Vulkan device";
  ModelShape shape = TinyShape();
  shape.context_length = 1024;
  std::shared_ptr<const GgufFile> file = SyntheticFile(shape, GgmlType::kQ8_0, 32);
  ASSERT_NE(file, nullptr);
  const EngineOptions options = TestOptions(kv::CacheDtype::kFp8E4M3, 40, 2);
  std::unique_ptr<Engine> observed = MakeEngine("vulkan", file, options);
  std::unique_ptr<Engine> plain = MakeEngine("vulkan", file, options);
  ASSERT_NE(observed, nullptr);
  ASSERT_NE(plain, nullptr);
  const std::vector<int32_t> table = BlockRange(0, 34);
  const std::vector<int32_t> prompt = SeededTokens(530, observed->config().vocab_size, 12);
  std::vector<PrefillProgress> seen;
  PrefillObserver observer{1, [&](const PrefillProgress& p) {
                             seen.push_back(p);
                             return absl::OkStatus();
                           }};
  absl::StatusOr<std::vector<float>> got =
      observed->Prefill({table, 0, 0}, prompt, false, &observer);
  absl::StatusOr<std::vector<float>> want = plain->Prefill({table, 0, 0}, prompt);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(*got, *want);
  ASSERT_EQ(seen.size(), 4u);  // 2 layers x 2 chunks
  const int64_t done[] = {1, 2, 1, 2};
  const int64_t tokens[] = {512, 512, 530, 530};
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].layers_done, done[i]) << i;
    EXPECT_EQ(seen[i].num_tokens, tokens[i]) << i;
  }
  const kv::KvRect all = kv::FullRect(observed->kv_layout(), 530);
  absl::StatusOr<std::vector<uint8_t>> a = observed->ExportKv({table, 0, 0}, 530, all);
  absl::StatusOr<std::vector<uint8_t>> b = plain->ExportKv({table, 0, 0}, 530, all);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

std::string ObserverCaseName(const ::testing::TestParamInfo<ObserverCase>& info) {
  return std::get<0>(info.param) + "_" + std::string(kv::CacheDtypeName(std::get<1>(info.param)));
}

INSTANTIATE_TEST_SUITE_P(All, PrefillObserverTest,
                         ::testing::Combine(::testing::Values("cpu", "vulkan"),
                                            ::testing::Values(kv::CacheDtype::kF32,
                                                              kv::CacheDtype::kFp8E4M3)),
                         ObserverCaseName);
// Exports from the callback through the staging buffer: a third command list, submitted while
// the next group runs on the other two.
INSTANTIATE_TEST_SUITE_P(Staged, PrefillObserverTest,
                         ::testing::Values(ObserverCase{"vulkan_staged", kv::CacheDtype::kFp8E4M3}),
                         ObserverCaseName);

}  // namespace
}  // namespace duet::testing
