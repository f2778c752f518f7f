#include "tests/engine/engine_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/engine/vulkan_engine.h"
#include "common/model/sampling.h"
#include "common/model/synthetic_model.h"
#include "common/vk/device.h"

namespace duet::testing {

ModelShape TinyShape() {
  absl::StatusOr<ModelShape> shape = FindShape("tiny");
  EXPECT_TRUE(shape.ok()) << shape.status();
  return *shape;
}

ModelShape SmallShape(int64_t head_dim) {
  ModelShape shape = TinyShape();
  shape.name = absl::StrCat("small-hd", head_dim);
  shape.display_name = shape.name;
  shape.hidden_dim = 128;
  shape.num_heads = 512 / head_dim;  // q_dim 512: 8 heads of 64 or 4 of 128
  shape.num_kv_heads = shape.num_heads / 2;
  shape.head_dim = head_dim;
  shape.ffn_dim = 128;
  shape.num_layers = 2;
  shape.context_length = 256;
  return shape;
}

std::shared_ptr<const GgufFile> SyntheticFile(const ModelShape& shape, GgmlType type,
                                              uint64_t seed) {
  SyntheticModelOptions options;
  options.shape = shape;
  options.weight_type = type;
  options.seed = seed;
  absl::StatusOr<GgufWriter> writer = BuildSyntheticModel(options);
  EXPECT_TRUE(writer.ok()) << writer.status();
  if (!writer.ok()) return nullptr;
  absl::StatusOr<std::vector<uint8_t>> bytes = writer->WriteToBuffer();
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return nullptr;
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(*bytes));
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(*owned);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return nullptr;
  return std::shared_ptr<const GgufFile>(file->release(), [owned](const GgufFile* f) { delete f; });
}

std::string Stories260kPath() { return std::string(DUET_SHARED_DIR) + "/models/stories260K.gguf"; }

std::shared_ptr<const GgufFile> Stories260k() {
  if (!std::filesystem::exists(Stories260kPath())) return nullptr;
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(Stories260kPath());
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return nullptr;
  return std::shared_ptr<const GgufFile>(std::move(*file));
}

bool HaveVulkan() {
  static const bool have = [] {
    absl::StatusOr<std::vector<vk::DeviceInfo>> devices = vk::Device::Enumerate();
    if (!devices.ok() || devices->empty()) {
      std::fprintf(stderr, "no Vulkan device: %s\n",
                   devices.ok() ? "none listed" : std::string(devices.status().message()).c_str());
      return false;
    }
    return true;
  }();
  return have;
}

EngineOptions TestOptions(kv::CacheDtype dtype, int64_t num_blocks, int64_t max_sequences) {
  EngineOptions options;
  options.kv_dtype = dtype;
  options.num_kv_blocks = num_blocks;
  options.max_sequences = max_sequences;
  return options;
}

std::unique_ptr<Engine> MakeEngine(const std::string& backend, std::shared_ptr<const GgufFile> file,
                                   const EngineOptions& options) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(backend, std::move(file), options);
  EXPECT_TRUE(engine.ok()) << backend << ": " << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

std::unique_ptr<Engine> MakeBackend(const std::string& mode, std::shared_ptr<const GgufFile> file,
                                    const EngineOptions& options) {
  if (mode != "vulkan_staged") return MakeEngine(mode, std::move(file), options);
  absl::StatusOr<std::unique_ptr<VulkanEngine>> engine =
      VulkanEngine::Create(std::move(file), options);
  EXPECT_TRUE(engine.ok()) << mode << ": " << engine.status();
  if (!engine.ok()) return nullptr;
  (*engine)->set_kv_copies_via_staging(true);
  return std::move(*engine);
}

std::vector<int32_t> SeededTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::vector<int32_t> t;
  uint32_t x = seed * 2654435761u + 7u;
  for (int64_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    t.push_back(static_cast<int32_t>(3 + (x >> 8) % static_cast<uint32_t>(vocab - 3)));
  }
  return t;
}

std::vector<int32_t> BlockRange(int32_t first, int32_t count) {
  std::vector<int32_t> table(static_cast<size_t>(count));
  std::iota(table.begin(), table.end(), first);
  return table;
}

std::vector<int32_t> ArgMaxRows(absl::Span<const float> logits, int64_t vocab) {
  std::vector<int32_t> ids;
  for (size_t r = 0; r + static_cast<size_t>(vocab) <= logits.size();
       r += static_cast<size_t>(vocab)) {
    ids.push_back(ArgMax(logits.subspan(r, static_cast<size_t>(vocab))));
  }
  return ids;
}

float TopTwoMargin(absl::Span<const float> row) {
  float first = -INFINITY;
  float second = -INFINITY;
  for (float v : row) {
    if (v > first) {
      second = first;
      first = v;
    } else if (v > second) {
      second = v;
    }
  }
  return first - second;
}

std::string BackendDtypeName(const ::testing::TestParamInfo<BackendDtype>& info) {
  return std::get<0>(info.param) + "_" + std::string(kv::CacheDtypeName(std::get<1>(info.param)));
}

LogitsDiff Compare(absl::Span<const float> got, absl::Span<const float> want) {
  LogitsDiff d;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    d.max_ref = std::max(d.max_ref, std::fabs(want[i]));
    const float e = std::isnan(got[i]) ? INFINITY : std::fabs(got[i] - want[i]);
    if (e > d.max_abs) {
      d.max_abs = e;
      d.worst = static_cast<int64_t>(i);
    }
  }
  return d;
}

::testing::AssertionResult LogitsNear(absl::Span<const float> got, absl::Span<const float> want,
                                      float atol, float rtol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  }
  const LogitsDiff d = Compare(got, want);
  const float bound = atol + rtol * d.max_ref;
  if (d.max_abs <= bound) return ::testing::AssertionSuccess() << "max error " << d.max_abs;
  return ::testing::AssertionFailure()
         << "max |error| " << d.max_abs << " > " << bound << " (atol " << atol << " + rtol " << rtol
         << " x max|ref| " << d.max_ref << ") at element " << d.worst << ": got "
         << got[static_cast<size_t>(d.worst)] << ", want " << want[static_cast<size_t>(d.worst)];
}

}  // namespace duet::testing
