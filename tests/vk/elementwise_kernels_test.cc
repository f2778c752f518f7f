// RMSNorm, residual add and SwiGLU against the CPU reference (common/model/cpu_forward.h), on
// fresh random inputs per test, outputs poisoned with NaN before each run.
//
// Tolerances (f32):
//   add    : exact (one IEEE f32 add, as on the CPU).
//   rmsnorm: atol 1e-6, rtol 1e-5. The GPU sums squares in f32 over a workgroup tree, the
//            reference in double; sqrt is within a few ulp on Vulkan.
//   swiglu : atol 1e-6, rtol 1e-5. exp() on Vulkan is within (3 + 2|x|) ulp, not correctly
//            rounded like the CPU's.
#include <gtest/gtest.h>

#include <cmath>

#include "common/model/cpu_forward.h"
#include "common/vk/ops_elementwise.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using testing::AllClose;
using testing::Download;
using testing::PoisonedBuffer;
using testing::RandomFloats;
using testing::Upload;

class ElementwiseTest : public testing::VkTest {};

struct RmsShape {
  int64_t rows;
  int64_t n;
};

void CheckRmsNorm(Device& device, Kernels& kernels, CommandList& cl, std::mt19937& rng,
                  RmsShape shape, bool in_place) {
  SCOPED_TRACE(::testing::Message()
               << "rows " << shape.rows << " n " << shape.n << (in_place ? " in place" : ""));
  const size_t total = static_cast<size_t>(shape.rows * shape.n);
  const std::vector<float> x = RandomFloats(rng, total, -3.0f, 3.0f);
  const std::vector<float> w = RandomFloats(rng, static_cast<size_t>(shape.n), -1.5f, 1.5f);
  const float eps = 1e-5f;
  std::vector<float> want(total);
  for (int64_t r = 0; r < shape.rows; ++r) {
    cpu_ref::RmsNorm(x.data() + r * shape.n, w.data(), shape.n, eps, want.data() + r * shape.n);
  }
  Buffer x_buf = Upload(device, x);
  Buffer w_buf = Upload(device, w);
  Buffer out_buf = PoisonedBuffer(device, total * 4);
  const BufferView out = in_place ? x_buf.view() : out_buf.view();
  ASSERT_TRUE(
      RecordRmsNorm(cl, kernels, x_buf.view(), w_buf.view(), out, shape.rows, shape.n, eps).ok());
  ASSERT_TRUE(cl.Submit().ok());
  EXPECT_TRUE(AllClose(Download<float>(device, out), want, 1e-6f, 1e-5f));
}

TEST_F(ElementwiseTest, RmsNormMatchesReference) {
  std::mt19937 rng(testing::TestSeed());
  for (RmsShape shape : {RmsShape{1, 1}, RmsShape{3, 7}, RmsShape{5, 255}, RmsShape{2, 256},
                         RmsShape{4, 1000}, RmsShape{33, 64}, RmsShape{2, 4099}}) {
    CheckRmsNorm(device(), kernels(), cl(), rng, shape, /*in_place=*/false);
  }
}

TEST_F(ElementwiseTest, RmsNormInPlace) {
  std::mt19937 rng(testing::TestSeed());
  CheckRmsNorm(device(), kernels(), cl(), rng, RmsShape{6, 300}, /*in_place=*/true);
}

TEST_F(ElementwiseTest, RmsNormRejectsBadShapes) {
  Buffer b = PoisonedBuffer(device(), 64);
  EXPECT_FALSE(RecordRmsNorm(cl(), kernels(), b.view(), b.view(), b.view(), 0, 4, 1e-5f).ok());
  EXPECT_FALSE(RecordRmsNorm(cl(), kernels(), b.view(), b.view(), b.view(), 4, 8, 1e-5f).ok());
  EXPECT_EQ(cl().num_recorded(), 0);
}

TEST_F(ElementwiseTest, AddMatchesReferenceExactly) {
  std::mt19937 rng(testing::TestSeed());
  for (int64_t n : {1, 255, 256, 257, 100003}) {
    SCOPED_TRACE(n);
    const std::vector<float> a = RandomFloats(rng, static_cast<size_t>(n), -100.0f, 100.0f);
    const std::vector<float> b = RandomFloats(rng, static_cast<size_t>(n), -1.0f, 1.0f);
    std::vector<float> want(a.size());
    for (size_t i = 0; i < a.size(); ++i) want[i] = a[i] + b[i];
    Buffer a_buf = Upload(device(), a);
    Buffer b_buf = Upload(device(), b);
    Buffer out = PoisonedBuffer(device(), a.size() * 4);
    ASSERT_TRUE(RecordAdd(cl(), kernels(), a_buf.view(), b_buf.view(), out.view(), n).ok());
    // The residual form: in place into a.
    ASSERT_TRUE(RecordAdd(cl(), kernels(), a_buf.view(), b_buf.view(), a_buf.view(), n).ok());
    ASSERT_TRUE(cl().Submit().ok());
    EXPECT_TRUE(AllClose(Download<float>(device(), out.view()), want, 0.0f, 0.0f));
    EXPECT_TRUE(AllClose(Download<float>(device(), a_buf.view()), want, 0.0f, 0.0f));
  }
}

TEST_F(ElementwiseTest, SwiGluMatchesReference) {
  std::mt19937 rng(testing::TestSeed());
  for (int64_t n : {1, 100, 256, 1000, 70001}) {
    SCOPED_TRACE(n);
    const std::vector<float> gate = RandomFloats(rng, static_cast<size_t>(n), -20.0f, 20.0f);
    const std::vector<float> up = RandomFloats(rng, static_cast<size_t>(n), -3.0f, 3.0f);
    std::vector<float> want(gate.size());
    for (size_t i = 0; i < gate.size(); ++i) want[i] = cpu_ref::Silu(gate[i]) * up[i];
    Buffer g_buf = Upload(device(), gate);
    Buffer u_buf = Upload(device(), up);
    Buffer out = PoisonedBuffer(device(), gate.size() * 4);
    ASSERT_TRUE(RecordSwiGlu(cl(), kernels(), g_buf.view(), u_buf.view(), out.view(), n).ok());
    ASSERT_TRUE(cl().Submit().ok());
    EXPECT_TRUE(AllClose(Download<float>(device(), out.view()), want, 1e-6f, 1e-5f));
  }
}

// With an artificially small maxStorageBufferRange the ops split into several dispatches over
// row-aligned views and must still match the reference.
TEST_F(ElementwiseTest, OpsSplitAcrossASmallBindableRange) {
  DeviceOptions options;
  options.device = std::to_string(device().info().index);
  options.max_storage_buffer_range_override = 16384;  // 4096 floats
  std::unique_ptr<Device> small = std::move(Device::Create(options)).value();
  Kernels small_kernels(small.get());
  std::unique_ptr<CommandList> small_cl = std::move(CommandList::Create(small.get())).value();
  std::mt19937 rng(testing::TestSeed());
  CheckRmsNorm(*small, small_kernels, *small_cl, rng, RmsShape{37, 1000}, false);
  EXPECT_EQ(small_cl->num_recorded(), 0);

  const int64_t n = 20000;  // 5 chunks
  const std::vector<float> a = RandomFloats(rng, n, -1.0f, 1.0f);
  const std::vector<float> b = RandomFloats(rng, n, -1.0f, 1.0f);
  std::vector<float> want(a.size());
  for (size_t i = 0; i < a.size(); ++i) want[i] = a[i] + b[i];
  Buffer a_buf = Upload(*small, a);
  Buffer b_buf = Upload(*small, b);
  Buffer out = PoisonedBuffer(*small, n * 4);
  ASSERT_TRUE(RecordAdd(*small_cl, small_kernels, a_buf.view(), b_buf.view(), out.view(), n).ok());
  EXPECT_EQ(small_cl->num_recorded(), 5);
  ASSERT_TRUE(small_cl->Submit().ok());
  EXPECT_TRUE(AllClose(Download<float>(*small, out.view()), want, 0.0f, 0.0f));
  // A row larger than the range cannot be split.
  Buffer big = PoisonedBuffer(*small, 8192 * 4);
  EXPECT_EQ(
      RecordRmsNorm(*small_cl, small_kernels, big.view(), big.view(), big.view(), 1, 8192, 1e-5f)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace duet::vk
