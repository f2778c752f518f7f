// Command recording: copies/fills, dispatch argument checks, barriers between dependent
// dispatches, descriptor-pool fallback, async submission and profiling.
#include "common/vk/command_list.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "common/vk/ops_elementwise.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using ::testing::HasSubstr;

struct AddPush {  // matches shaders/add.comp
  uint32_t n;
};
DUET_VK_PUSH_CONSTANTS(AddPush);

class CommandListTest : public testing::VkTest {};

TEST(Groups1DTest, SplitsLargeCounts) {
  const Groups small = Groups1D(1000);
  EXPECT_EQ(small.x, 1000u);
  EXPECT_EQ(small.y, 1u);
  const Groups big = Groups1D(200000, 65535);
  EXPECT_EQ(big.x, 65535u);
  EXPECT_EQ(big.y, 4u);
  EXPECT_EQ(Groups1D(0).x, 1u);
}

TEST_F(CommandListTest, FillAndCopy) {
  Buffer a = testing::PoisonedBuffer(device(), 4096);
  Buffer b = testing::PoisonedBuffer(device(), 4096);
  ASSERT_TRUE(cl().Fill(a.view(0, 2048), 0x3f800000u).ok());  // 1.0f
  ASSERT_TRUE(cl().Fill(a.view(2048, 2048), 0).ok());
  ASSERT_TRUE(cl().Copy(a.view(), b.view()).ok());
  EXPECT_EQ(cl().num_recorded(), 3);
  ASSERT_TRUE(cl().Submit().ok());
  EXPECT_EQ(cl().num_recorded(), 0);
  const std::vector<float> got = testing::Download<float>(device(), b.view());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], i < 512 ? 1.0f : 0.0f) << i;
  EXPECT_EQ(cl().Fill(a.view(2, 8), 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cl().Copy(a.view(0, 8), b.view(0, 16)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(cl().Submit().ok());  // nothing recorded: no-op
}

TEST_F(CommandListTest, DispatchChecksItsArguments) {
  const Pipeline* add = *kernels().Get<AddPush>(KernelId::kAddF32);
  Buffer buf = testing::PoisonedBuffer(device(), 1024);
  const BufferView v = buf.view();
  // Wrong number of buffers.
  absl::Status s = cl().Dispatch(*add, {v, v}, AddPush{4}, Groups{1});
  EXPECT_THAT(s.message(), HasSubstr("2 buffers for 3 bindings"));
  // Extra views are validated, then ignored.
  EXPECT_EQ(cl().Dispatch(*add, {v, v, v, BufferView{}}, AddPush{4}, Groups{1}).code(),
            absl::StatusCode::kInvalidArgument);
  // Wrong push-constant size.
  struct Big {
    uint32_t a, b;
  };
  s = cl().Dispatch(*add, {v, v, v}, Big{1, 2}, Groups{1});
  EXPECT_THAT(s.message(), HasSubstr("8 bytes of push constants"));
  // Misaligned view (only checkable when the alignment is > 4).
  if (device().limits().min_storage_buffer_offset_alignment > 4) {
    s = cl().Dispatch(*add, {v.Sub(4, 16), v, v}, AddPush{4}, Groups{1});
    EXPECT_THAT(s.message(), HasSubstr("not a multiple"));
  }
  // Empty view, zero groups.
  EXPECT_EQ(cl().Dispatch(*add, {BufferView{}, v, v}, AddPush{4}, Groups{1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cl().Dispatch(*add, {v, v, v}, AddPush{4}, Groups{0}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cl().num_recorded(), 0);
}

TEST_F(CommandListTest, ViewsLargerThanTheBindableRangeAreRejected) {
  DeviceOptions options;
  options.device = std::to_string(device().info().index);
  options.max_storage_buffer_range_override = 4096;
  std::unique_ptr<Device> small = std::move(Device::Create(options)).value();
  EXPECT_EQ(small->limits().max_storage_buffer_range, 4096u);
  {
    Kernels kernels(small.get());
    std::unique_ptr<CommandList> cl = std::move(CommandList::Create(small.get())).value();
    Buffer buf = std::move(small->CreateBuffer(8192)).value();
    const Pipeline* add = *kernels.Get<AddPush>(KernelId::kAddF32);
    const absl::Status s =
        cl->Dispatch(*add, {buf.view(), buf.view(), buf.view()}, AddPush{2048}, Groups{8});
    EXPECT_THAT(s.message(), HasSubstr("maxStorageBufferRange"));
  }
}

// A chain of dependent in-place adds in one submission: each reads the previous one's output,
// so a missing barrier would show as a wrong sum.
void RunDependentChain(Device& device, Kernels& kernels, CommandList& cl, int steps) {
  const int64_t n = 3000;
  Buffer acc = testing::Upload(device, std::vector<float>(n, 0.0f));
  Buffer one = testing::Upload(device, std::vector<float>(n, 1.0f));
  for (int i = 0; i < steps; ++i) {
    ASSERT_TRUE(RecordAdd(cl, kernels, acc.view(), one.view(), acc.view(), n).ok());
  }
  ASSERT_EQ(cl.num_recorded(), steps);
  ASSERT_TRUE(cl.Submit().ok());
  const std::vector<float> got = testing::Download<float>(device, acc.view());
  for (float v : got) ASSERT_EQ(v, static_cast<float>(steps));
}

TEST_F(CommandListTest, DependentDispatchesSeeEachOther) {
  RunDependentChain(device(), kernels(), cl(), 50);
}

TEST_F(CommandListTest, DescriptorPoolFallbackGrowsAndRecycles) {
  DeviceOptions options;
  options.device = std::to_string(device().info().index);
  options.use_push_descriptors = false;
  std::unique_ptr<Device> dev = std::move(Device::Create(options)).value();
  ASSERT_FALSE(dev->uses_push_descriptors());
  {
    Kernels kernels(dev.get());
    CommandListOptions cl_options;
    cl_options.descriptor_sets_per_pool = 16;  // forces several pools in one submission
    std::unique_ptr<CommandList> cl = std::move(CommandList::Create(dev.get(), cl_options)).value();
    RunDependentChain(*dev, kernels, *cl, 70);
    RunDependentChain(*dev, kernels, *cl, 20);  // pools reset and reused
  }
}

TEST_F(CommandListTest, AsyncSubmitThenWait) {
  Buffer a = testing::PoisonedBuffer(device(), 256);
  ASSERT_TRUE(cl().Fill(a.view(), 0).ok());
  ASSERT_TRUE(cl().SubmitAsync().ok());
  EXPECT_EQ(cl().Fill(a.view(), 0).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(cl().Wait().ok());
  ASSERT_TRUE(cl().Wait().ok());  // nothing pending: no-op
  EXPECT_EQ(testing::Download<float>(device(), a.view()), std::vector<float>(64, 0.0f));
}

TEST_F(CommandListTest, ProfilingReportsOneRowPerKernel) {
  if (!device().features().timestamps) GTEST_SKIP() << "no timestamps on this device";
  std::unique_ptr<CommandList> prof =
      std::move(CommandList::Create(&device(), {.profiling = true})).value();
  const int64_t n = 4096;
  Buffer x = testing::Upload(device(), std::vector<float>(n, 0.5f));
  Buffer w = testing::Upload(device(), std::vector<float>(n, 1.0f));
  Buffer out = testing::PoisonedBuffer(device(), n * 4);
  for (int step = 0; step < 2; ++step) {  // two submissions accumulate
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(
          RecordRmsNorm(*prof, kernels(), x.view(), w.view(), out.view(), 4, n / 4, 1e-5f).ok());
    }
    ASSERT_TRUE(RecordAdd(*prof, kernels(), x.view(), w.view(), out.view(), n).ok());
    ASSERT_TRUE(RecordSwiGlu(*prof, kernels(), x.view(), w.view(), out.view(), n).ok());
    ASSERT_TRUE(prof->Submit().ok());
  }
  const std::vector<KernelTiming> report = prof->ProfileReport();
  ASSERT_EQ(report.size(), 3u);
  for (const KernelTiming& t : report) {
    EXPECT_EQ(t.count, t.name == "rms_norm_f32" ? 6 : 2) << t.name;
    EXPECT_GE(t.total_us, 0.0);
    EXPECT_NEAR(t.mean_us, t.total_us / t.count, 1e-9);
    std::printf("[vk] %-14s count %lld total %.1f us mean %.1f us\n", t.name.c_str(),
                static_cast<long long>(t.count), t.total_us, t.mean_us);
  }
  EXPECT_GE(report[0].total_us, report[1].total_us);
  prof->ResetProfile();
  EXPECT_TRUE(prof->ProfileReport().empty());
  EXPECT_TRUE(cl().ProfileReport().empty());  // not profiling
}

}  // namespace
}  // namespace duet::vk
