// Shared helpers for the Vulkan tests: one device per test binary (skipped when the machine has
// no Vulkan device), buffer upload/download, NaN poisoning, seeded random data and tolerance
// checks.
#ifndef DUET_TESTS_VK_VK_TEST_UTIL_H_
#define DUET_TESTS_VK_VK_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "common/vk/buffer.h"
#include "common/vk/command_list.h"
#include "common/vk/device.h"
#include "common/vk/pipeline.h"

namespace duet::vk::testing {

// The process-wide test device and its kernel registry, created on first use with default
// options (DUET_VK_DEVICE selects another device). Null when there is no usable device; the
// reason is in TestDeviceError().
Device* TestDevice();
Kernels* TestKernels();
std::string TestDeviceError();

// Fixture: skips the test without a device; gives it a fresh CommandList.
class VkTest : public ::testing::Test {
 protected:
  void SetUp() override;

  Device& device() { return *device_; }
  Kernels& kernels() { return *kernels_; }
  CommandList& cl() { return *cl_; }

  Device* device_ = nullptr;
  Kernels* kernels_ = nullptr;
  std::unique_ptr<CommandList> cl_;
};

// A seed derived from the running test's name: reproducible per test, distinct across tests.
uint32_t TestSeed();

std::vector<float> RandomFloats(std::mt19937& rng, size_t n, float lo, float hi);

// A kDevice buffer holding `values` (crashes on error: tests only).
template <typename T>
Buffer Upload(Device& device, const std::vector<T>& values, MemoryKind kind = MemoryKind::kDevice);
// A kDevice buffer of `bytes` bytes, every 32-bit word set to f32 NaN (the poison).
Buffer PoisonedBuffer(Device& device, uint64_t bytes);
template <typename T>
std::vector<T> Download(Device& device, BufferView view);

// Element-wise |got - want| <= atol + rtol * |want|; NaN anywhere in `got` fails. Reports the
// first few mismatches and the largest error.
::testing::AssertionResult AllClose(absl::Span<const float> got, absl::Span<const float> want,
                                    float atol, float rtol);

// ----------------------------------------------------------------------------------------------
// Implementation of the templates.

Buffer UploadBytes(Device& device, const void* data, uint64_t bytes, MemoryKind kind);
void DownloadBytes(Device& device, BufferView view, void* data);

template <typename T>
Buffer Upload(Device& device, const std::vector<T>& values, MemoryKind kind) {
  return UploadBytes(device, values.data(), values.size() * sizeof(T), kind);
}

template <typename T>
std::vector<T> Download(Device& device, BufferView view) {
  std::vector<T> out(view.size / sizeof(T));
  DownloadBytes(device, view, out.data());
  return out;
}

}  // namespace duet::vk::testing

#endif  // DUET_TESTS_VK_VK_TEST_UTIL_H_
