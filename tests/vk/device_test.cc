// Device selection, feature checks and limits.
#include "common/vk/device.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using ::testing::HasSubstr;

std::vector<DeviceInfo> FakeDevices() {
  return {
      DeviceInfo{0, "llvmpipe (LLVM 15.0.6, 256 bits)", DeviceType::kCpu},
      DeviceInfo{1, "Intel(R) UHD Graphics 770", DeviceType::kIntegrated},
      DeviceInfo{2, "NVIDIA GeForce RTX 4090", DeviceType::kDiscrete},
      DeviceInfo{3, "Virtual GPU", DeviceType::kVirtual},
  };
}

TEST(SelectDeviceTest, NoDevicesIsAClearError) {
  const absl::StatusOr<int> chosen = SelectDevice({}, "");
  ASSERT_EQ(chosen.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(chosen.status().message(), HasSubstr("no Vulkan device"));
}

TEST(SelectDeviceTest, PrefersDiscreteThenIntegratedThenVirtualThenCpu) {
  std::vector<DeviceInfo> devices = FakeDevices();
  EXPECT_EQ(*SelectDevice(devices, ""), 2);
  devices.erase(devices.begin() + 2);  // no discrete
  EXPECT_EQ(*SelectDevice(devices, ""), 1);
  devices.erase(devices.begin() + 1);  // no integrated
  EXPECT_EQ(*SelectDevice(devices, ""), 3);
  devices.pop_back();  // only the CPU device
  EXPECT_EQ(*SelectDevice(devices, ""), 0);
}

TEST(SelectDeviceTest, ExplicitIndexOrCaseInsensitiveName) {
  const std::vector<DeviceInfo> devices = FakeDevices();
  EXPECT_EQ(*SelectDevice(devices, "0"), 0);
  EXPECT_EQ(*SelectDevice(devices, "3"), 3);
  EXPECT_EQ(*SelectDevice(devices, "LLVMPIPE"), 0);
  EXPECT_EQ(*SelectDevice(devices, "rtx"), 2);
  EXPECT_EQ(*SelectDevice(devices, "uhd graphics"), 1);
}

TEST(SelectDeviceTest, NoMatchListsTheDevices) {
  const std::vector<DeviceInfo> devices = FakeDevices();
  for (const char* choice : {"7", "radeon"}) {
    const absl::StatusOr<int> chosen = SelectDevice(devices, choice);
    ASSERT_EQ(chosen.status().code(), absl::StatusCode::kNotFound) << choice;
    EXPECT_THAT(chosen.status().message(), HasSubstr(choice));
    EXPECT_THAT(chosen.status().message(), HasSubstr("2: NVIDIA GeForce RTX 4090 (discrete)"));
    EXPECT_THAT(chosen.status().message(), HasSubstr("0: llvmpipe"));
  }
}

TEST(CheckFeaturesTest, NamesTheMissingFeature) {
  DeviceFeatures have;
  have.storage_buffer_16bit = true;
  DeviceFeatures want;
  want.storage_buffer_16bit = true;
  EXPECT_TRUE(CheckFeatures(have, want, "dev").ok());
  want.shader_int8 = true;
  const absl::Status status = CheckFeatures(have, want, "Some GPU");
  ASSERT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("shaderInt8"));
  EXPECT_THAT(status.message(), HasSubstr("Some GPU"));
  want = DeviceFeatures{};
  want.push_descriptors = true;
  EXPECT_THAT(CheckFeatures(have, want, "x").message(), HasSubstr("VK_KHR_push_descriptor"));
}

class DeviceTest : public testing::VkTest {};

TEST_F(DeviceTest, LimitsAndFeaturesAreQueried) {
  const DeviceLimits& l = device().limits();
  EXPECT_GE(l.max_storage_buffer_range, uint64_t{1} << 27);  // Vulkan guarantees 2^27
  EXPECT_GE(l.max_shared_memory_bytes, 16384u);
  EXPECT_GE(l.max_push_constant_bytes, 128u);
  EXPECT_GT(l.subgroup_size, 0u);
  EXPECT_GE(l.max_workgroup_invocations, 128u);
  EXPECT_GE(l.max_workgroup_count[0], 65535u);
  EXPECT_GE(l.min_storage_buffer_offset_alignment, 1u);
  EXPECT_EQ(l.min_storage_buffer_offset_alignment & (l.min_storage_buffer_offset_alignment - 1),
            0u);
  if (device().features().timestamps) {
    EXPECT_GT(l.timestamp_period_ns, 0.0);
  }
  const DeviceFeatures& f = device().features();
  std::printf(
      "[vk] %s: fp16 %d int8 %d storage8 %d storage16 %d subgroup-arith %d push-desc %d "
      "timestamps %d unified %d\n",
      device().info().name.c_str(), f.shader_float16, f.shader_int8, f.storage_buffer_8bit,
      f.storage_buffer_16bit, f.subgroup_arithmetic, f.push_descriptors, f.timestamps,
      l.unified_memory);
}

TEST_F(DeviceTest, EnumerateIncludesTheSelectedDevice) {
  const absl::StatusOr<std::vector<DeviceInfo>> devices = Device::Enumerate();
  ASSERT_TRUE(devices.ok()) << devices.status();
  bool found = false;
  for (const DeviceInfo& d : *devices) found |= d.name == device().info().name;
  EXPECT_TRUE(found);
}

TEST_F(DeviceTest, ExplicitChoiceByNameAndIndex) {
  DeviceOptions options;
  options.device = std::to_string(device().info().index);
  absl::StatusOr<std::unique_ptr<Device>> by_index = Device::Create(options);
  ASSERT_TRUE(by_index.ok()) << by_index.status();
  EXPECT_EQ((*by_index)->info().name, device().info().name);
  options.device = device().info().name.substr(0, 4);
  absl::StatusOr<std::unique_ptr<Device>> by_name = Device::Create(options);
  ASSERT_TRUE(by_name.ok()) << by_name.status();
}

TEST_F(DeviceTest, UnknownChoiceFailsListingDevices) {
  DeviceOptions options;
  options.device = "no-such-gpu-anywhere";
  const absl::StatusOr<std::unique_ptr<Device>> created = Device::Create(options);
  ASSERT_EQ(created.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(created.status().message(), HasSubstr("no-such-gpu-anywhere"));
  EXPECT_THAT(created.status().message(), HasSubstr(device().info().name));
}

TEST_F(DeviceTest, EnvironmentVariableChoosesTheDevice) {
  ASSERT_EQ(setenv("DUET_VK_DEVICE", "no-such-gpu-from-env", 1), 0);
  const absl::StatusOr<std::unique_ptr<Device>> created = Device::Create();
  unsetenv("DUET_VK_DEVICE");
  ASSERT_EQ(created.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(created.status().message(), HasSubstr("no-such-gpu-from-env"));
}

// With the loader pointed at no driver, Create reports that there is no Vulkan device.
TEST_F(DeviceTest, NoDriverIsAClearError) {
  const char* kVars[] = {"VK_ICD_FILENAMES", "VK_DRIVER_FILES"};
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* var : kVars) {
    if (const char* value = std::getenv(var)) saved.emplace_back(var, value);
    ASSERT_EQ(setenv(var, "/nonexistent/duet_no_icd.json", 1), 0);
  }
  const absl::StatusOr<std::unique_ptr<Device>> created = Device::Create();
  for (const char* var : kVars) unsetenv(var);
  for (const auto& [var, value] : saved) setenv(var.c_str(), value.c_str(), 1);
  ASSERT_EQ(created.status().code(), absl::StatusCode::kNotFound) << created.status();
  EXPECT_THAT(created.status().message(), HasSubstr("no Vulkan device"));
}

TEST_F(DeviceTest, RequiredFeaturesPresentOrNamed) {
  DeviceOptions options;
  options.device = std::to_string(device().info().index);
  options.required = device().features();  // everything it has: must succeed
  EXPECT_TRUE(Device::Create(options).ok());
  // Requiring something the device lacks fails naming it (only checkable when it lacks one).
  const DeviceFeatures& f = device().features();
  DeviceFeatures want;
  if (!f.shader_int8) {
    want.shader_int8 = true;
  } else if (!f.storage_buffer_8bit) {
    want.storage_buffer_8bit = true;
  } else if (!f.push_descriptors) {
    want.push_descriptors = true;
  } else {
    GTEST_SKIP() << "the device has every optional feature";
  }
  options.required = want;
  const absl::StatusOr<std::unique_ptr<Device>> created = Device::Create(options);
  EXPECT_EQ(created.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace duet::vk
