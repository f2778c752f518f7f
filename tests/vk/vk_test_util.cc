#include "tests/vk/vk_test_util.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>

#include "absl/strings/str_cat.h"

namespace duet::vk::testing {
namespace {

struct Shared {
  std::unique_ptr<Device> device;
  std::unique_ptr<Kernels> kernels;  // destroyed before the device
  std::string error;

  Shared() {
    absl::StatusOr<std::unique_ptr<Device>> created = Device::Create();
    if (!created.ok()) {
      error = std::string(created.status().message());
      return;
    }
    device = std::move(created).value();
    kernels = std::make_unique<Kernels>(device.get());
    std::fprintf(stderr, "[vk] device: %s (%s), maxStorageBufferRange %llu, subgroup %u\n",
                 device->info().name.c_str(),
                 std::string(DeviceTypeName(device->info().type)).c_str(),
                 static_cast<unsigned long long>(device->limits().max_storage_buffer_range),
                 device->limits().subgroup_size);
  }
  ~Shared() {
    kernels.reset();
    device.reset();
  }
};

Shared& GetShared() {
  static Shared* shared = new Shared();  // lives for the whole process
  return *shared;
}

void Die(const absl::Status& status, const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
  std::abort();
}

}  // namespace

Device* TestDevice() { return GetShared().device.get(); }
Kernels* TestKernels() { return GetShared().kernels.get(); }
std::string TestDeviceError() { return GetShared().error; }

void VkTest::SetUp() {
  device_ = TestDevice();
  kernels_ = TestKernels();
  if (device_ == nullptr) GTEST_SKIP() << "no Vulkan device: " << TestDeviceError();
  absl::StatusOr<std::unique_ptr<CommandList>> cl = CommandList::Create(device_);
  ASSERT_TRUE(cl.ok()) << cl.status();
  cl_ = std::move(cl).value();
}

uint32_t TestSeed() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string name =
      info == nullptr ? "" : absl::StrCat(info->test_suite_name(), ".", info->name());
  return static_cast<uint32_t>(std::hash<std::string>{}(name));
}

std::vector<float> RandomFloats(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& v : out) v = dist(rng);
  return out;
}

Buffer UploadBytes(Device& device, const void* data, uint64_t bytes, MemoryKind kind) {
  absl::StatusOr<Buffer> buffer = device.CreateBuffer(bytes, kind);
  if (!buffer.ok()) Die(buffer.status(), "CreateBuffer");
  const absl::Status status = device.Upload(buffer->view(), data);
  if (!status.ok()) Die(status, "Upload");
  return std::move(buffer).value();
}

void DownloadBytes(Device& device, BufferView view, void* data) {
  const absl::Status status = device.Download(view, data);
  if (!status.ok()) Die(status, "Download");
}

Buffer PoisonedBuffer(Device& device, uint64_t bytes) {
  std::vector<float> nan((bytes + 3) / 4, std::nanf(""));
  std::vector<char> raw(bytes);
  std::memcpy(raw.data(), nan.data(), bytes);
  return UploadBytes(device, raw.data(), bytes, MemoryKind::kDevice);
}

::testing::AssertionResult AllClose(absl::Span<const float> got, absl::Span<const float> want,
                                    float atol, float rtol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  int64_t bad = 0;
  double max_error = 0.0;
  std::string first;
  for (size_t i = 0; i < got.size(); ++i) {
    const double error = std::fabs(static_cast<double>(got[i]) - want[i]);
    const bool ok = !std::isnan(got[i]) && error <= atol + rtol * std::fabs(want[i]);
    if (!std::isnan(error)) max_error = std::max(max_error, error);
    if (!ok) {
      if (bad < 5) absl::StrAppend(&first, "\n  [", i, "] got ", got[i], " want ", want[i]);
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << got.size() << " elements out of tolerance (atol " << atol << ", rtol "
         << rtol << "), max error " << max_error << first;
}

}  // namespace duet::vk::testing
