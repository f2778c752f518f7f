// Compute pipelines built from the SPIR-V that shaders/ compiles into the binary, and the
// registry that creates and caches them.
//
// Every variant listed in shaders/kernels.table becomes a KernelId (generated header
// "common/vk/kernel_ids.h" in the build tree: `rms_norm_f32` -> KernelId::kRmsNormF32,
// `get_rows_q8_0` -> KernelId::kGetRowsQ8_0) and an embedded SPIR-V module.
//
// Shader interface conventions (checked when a pipeline is created, from the SPIR-V itself):
//   - storage buffers or uniform texel buffers in descriptor set 0 at bindings 0..N-1 (Dispatch
//     binds its views in order; a texel binding gets a VkBufferView of the view with 4 x 32-bit
//     texels: R32G32B32A32 UINT, SINT or SFLOAT after the shader's sampler type). N = the
//     highest binding the SPIR-V still uses + 1: glslc -O removes bindings a variant never
//     reads, so a variant may need fewer views than the host passes (extra views are checked,
//     then ignored);
//   - at most one push-constant block, whose size must equal sizeof() of the C++ struct the host
//     passes (the block size is read from the SPIR-V: member Offset decorations + member sizes);
//   - specialization constants with constant_id 0..K-1, each 32 bits (uint, int, float or bool).
//
// Host code for a kernel:
//   struct RmsNormPush { uint32_t n; float eps; };  DUET_VK_PUSH_CONSTANTS(RmsNormPush);
//   DUET_ASSIGN_OR_RETURN(const Pipeline* p, kernels.Get<RmsNormPush>(KernelId::kRmsNormF32));
//   return cl.Dispatch(*p, {x, w, out}, RmsNormPush{n, eps}, Groups{rows});
#ifndef DUET_COMMON_VK_PIPELINE_H_
#define DUET_COMMON_VK_PIPELINE_H_

#include <vulkan/vulkan.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/vk/kernel_ids.h"  // generated from shaders/kernels.table

namespace duet::vk {

class Device;

// Vulkan guarantees 128 bytes of push constants on every device.
inline constexpr uint32_t kMaxPushConstantBytes = 128;

// Declares `Type` a push-constant struct: trivially copyable, 4-byte multiple, <= 128 bytes.
// Lay it out as the GLSL block does under std430 (scalars and uvec2/uvec4 at natural alignment;
// avoid vec3). Put it at namespace scope right after the struct.
#define DUET_VK_PUSH_CONSTANTS(Type)                                                      \
  static_assert(std::is_trivially_copyable_v<Type>, #Type " must be trivially copyable"); \
  static_assert(sizeof(Type) % 4 == 0, #Type " size must be a multiple of 4 bytes");      \
  static_assert(sizeof(Type) <= ::duet::vk::kMaxPushConstantBytes,                        \
                #Type " exceeds the 128-byte push-constant limit")

// Name of a kernel variant as in shaders/kernels.table ("rms_norm_f32").
std::string_view KernelName(KernelId id);
// Inverse of KernelName. NOT_FOUND when no variant has that name.
absl::StatusOr<KernelId> FindKernel(std::string_view name);
// The embedded SPIR-V of a variant.
absl::Span<const uint32_t> KernelSpirv(KernelId id);

// Bit pattern of a float specialization constant.
inline uint32_t SpecFloat(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// A created compute pipeline. Owned by Kernels; pointers stay valid until Kernels is destroyed.
class Pipeline {
 public:
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;
  ~Pipeline();

  KernelId id() const { return id_; }
  std::string_view name() const { return KernelName(id_); }
  const std::vector<uint32_t>& spec_constants() const { return spec_constants_; }
  uint32_t push_constant_bytes() const { return push_constant_bytes_; }
  // Highest binding the SPIR-V uses + 1.
  uint32_t num_bindings() const { return num_bindings_; }
  // Per binding in [0, num_bindings): VK_DESCRIPTOR_TYPE_STORAGE_BUFFER or
  // VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER, and for texel bindings the view format.
  VkDescriptorType binding_type(uint32_t b) const { return binding_types_[b]; }
  VkFormat texel_format(uint32_t b) const { return texel_formats_[b]; }
  // The workgroup size after specialization.
  const std::array<uint32_t, 3>& local_size() const { return local_size_; }

  VkPipeline handle() const { return pipeline_; }
  VkPipelineLayout layout() const { return layout_; }
  VkDescriptorSetLayout set_layout() const { return set_layout_; }

 private:
  friend class Kernels;
  explicit Pipeline(VkDevice device) : device_(device) {}

  VkDevice device_;
  KernelId id_ = KernelId{};
  std::vector<uint32_t> spec_constants_;
  uint32_t push_constant_bytes_ = 0;
  uint32_t num_bindings_ = 0;
  std::vector<VkDescriptorType> binding_types_;  // [num_bindings_]
  std::vector<VkFormat> texel_formats_;          // [num_bindings_]; UNDEFINED for storage
  std::array<uint32_t, 3> local_size_ = {1, 1, 1};
  VkShaderModule module_ = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout_ = VK_NULL_HANDLE;
  VkPipelineLayout layout_ = VK_NULL_HANDLE;
  VkPipeline pipeline_ = VK_NULL_HANDLE;
};

// The pipeline registry and cache, keyed by (kernel, specialization constants). Pipelines are
// created on first use. Thread-safe. REQUIRES: `device` outlives this object.
class Kernels {
 public:
  explicit Kernels(Device* device);
  Kernels(const Kernels&) = delete;
  Kernels& operator=(const Kernels&) = delete;
  ~Kernels();

  // The pipeline for `id` specialized with `spec_constants` (constant_id i = element i).
  // INVALID_ARGUMENT when `push_constant_bytes` differs from the shader's push-constant block
  // size (0 when it has none), or when spec_constants has more entries than the shader declares
  // (ids 0..K-1; fewer is fine, the rest keep their defaults).
  // INTERNAL when the SPIR-V is malformed or pipeline creation fails.
  absl::StatusOr<const Pipeline*> Get(KernelId id, absl::Span<const uint32_t> spec_constants,
                                      uint32_t push_constant_bytes) const;

  // Get() with the size of the push-constant struct the host will pass.
  template <typename PushConstants>
  absl::StatusOr<const Pipeline*> Get(KernelId id,
                                      absl::Span<const uint32_t> spec_constants = {}) const {
    return Get(id, spec_constants, static_cast<uint32_t>(sizeof(PushConstants)));
  }

  Device& device() const { return *device_; }
  // Pipelines created so far.
  int64_t size() const;

 private:
  using Key = std::pair<KernelId, std::vector<uint32_t>>;

  absl::StatusOr<std::unique_ptr<Pipeline>> Create(KernelId id,
                                                   absl::Span<const uint32_t> spec_constants) const;

  Device* device_;
  mutable absl::Mutex mutex_;
  mutable std::map<Key, std::unique_ptr<Pipeline>> cache_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_PIPELINE_H_
