// Streaming-read bandwidth probe (shaders/stream_read.comp), through a storage buffer and through
// a uniform texel buffer view of the same bytes: checks the sum and prints GB/s from the
// dispatch's timestamps (or wall time without them). A measurement, not a gate.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

struct StreamPush {
  uint32_t num_vec4;
};
DUET_VK_PUSH_CONSTANTS(StreamPush);

class StreamReadTest : public testing::VkTest, public ::testing::WithParamInterface<KernelId> {};

TEST_P(StreamReadTest, SumsAndReportsBandwidth) {
  const KernelId kernel = GetParam();
  const uint64_t bytes = uint64_t{64} << 20;
  ASSERT_LE(bytes, device().limits().max_storage_buffer_range);
  const uint32_t num_vec4 = static_cast<uint32_t>(bytes / 16);
  const uint32_t num_groups = 512;
  absl::StatusOr<Buffer> in = device().CreateBuffer(bytes);
  ASSERT_TRUE(in.ok()) << in.status();
  Buffer out = testing::PoisonedBuffer(device(), num_groups * 4);
  ASSERT_TRUE(cl().Fill(in->view(), 0x3f800000u).ok());  // 1.0f
  ASSERT_TRUE(cl().Submit().ok());

  const bool timed = device().features().timestamps;
  std::unique_ptr<CommandList> prof =
      std::move(CommandList::Create(&device(), {.profiling = timed})).value();
  const Pipeline* pipeline = *kernels().Get<StreamPush>(kernel);
  constexpr int kRuns = 3;
  const auto start = std::chrono::steady_clock::now();
  for (int run = 0; run < kRuns; ++run) {
    ASSERT_TRUE(prof->Dispatch(*pipeline, {in->view(), out.view()}, StreamPush{num_vec4},
                               Groups{num_groups})
                    .ok());
  }
  ASSERT_TRUE(prof->Submit().ok());
  const double wall_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();

  const std::vector<float> partial = testing::Download<float>(device(), out.view());
  double sum = 0.0;
  for (float p : partial) sum += p;
  EXPECT_EQ(sum, static_cast<double>(bytes / 4));  // every f32 is 1.0: integer sums are exact

  double us = wall_us / kRuns;
  if (timed) {
    const std::vector<KernelTiming> report = prof->ProfileReport();
    ASSERT_EQ(report.size(), 1u);
    EXPECT_EQ(report[0].count, kRuns);
    us = report[0].mean_us;
  }
  std::printf("[vk] %s on %s: %llu MiB in %.0f us = %.2f GB/s (%s)\n",
              std::string(KernelName(kernel)).c_str(), device().info().name.c_str(),
              static_cast<unsigned long long>(bytes >> 20), us,
              static_cast<double>(bytes) / (us * 1e3), timed ? "timestamps" : "wall clock");
}

INSTANTIATE_TEST_SUITE_P(ReadPaths, StreamReadTest,
                         ::testing::Values(KernelId::kStreamReadF32, KernelId::kStreamReadTexelF32),
                         [](const ::testing::TestParamInfo<KernelId>& param) {
                           return param.param == KernelId::kStreamReadF32 ? "Storage" : "Texel";
                         });

}  // namespace
}  // namespace duet::vk
