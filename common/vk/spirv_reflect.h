// Minimal SPIR-V reflection: what pipeline creation checks a shader's interface against.
// Parses only the instructions it needs (decorations, types, constants, variables, entry-point
// execution modes); everything else is skipped by word count.
#ifndef DUET_COMMON_VK_SPIRV_REFLECT_H_
#define DUET_COMMON_VK_SPIRV_REFLECT_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace duet::vk {

struct SpirvInterface {
  // Size in bytes of the PushConstant block: max over members of (Offset decoration + member
  // size), members sized from their types (scalars, vectors, matrices with MatrixStride, arrays
  // with ArrayStride, nested structs). 0 when the module has no push constants.
  uint32_t push_constant_bytes = 0;
  // Descriptor bindings of set 0 holding storage buffers (StorageBuffer storage class, or
  // Uniform + BufferBlock in older modules), sorted. May have gaps where the optimizer removed
  // unused bindings.
  std::vector<uint32_t> storage_buffer_bindings;
  // Descriptor bindings of set 0 holding uniform texel buffers (GLSL samplerBuffer /
  // usamplerBuffer / isamplerBuffer: a sampled image of dimension Buffer), sorted, with the
  // component type of the texels the shader reads.
  enum class TexelComponent { kFloat, kUint, kInt };
  std::vector<std::pair<uint32_t, TexelComponent>> texel_buffer_bindings;
  // True when some variable uses a descriptor set other than 0 or any other kind of descriptor.
  bool has_other_descriptors = false;
  // SpecId decorations present, sorted.
  std::vector<uint32_t> spec_ids;
  // LocalSize execution mode (or {1,1,1} when absent), and for each dimension the SpecId that
  // overrides it (LocalSizeId / WorkgroupSize built-in with OpSpecConstantComposite), or -1.
  std::array<uint32_t, 3> local_size = {1, 1, 1};
  std::array<int32_t, 3> local_size_spec_ids = {-1, -1, -1};
  // Default value of each SpecId (32-bit constants only), sorted by id. Where several constants
  // share a SpecId, a declared constant (constant_id) wins over a local-size one (whose default
  // glslang sets to 1 when only local_size_x_id is given); local_size reflects the same rule.
  std::vector<std::pair<uint32_t, uint32_t>> spec_defaults;
};

// INVALID_ARGUMENT when `words` is not a SPIR-V module (magic number, truncated instruction) or
// when the push-constant block uses a type this parser cannot size.
absl::StatusOr<SpirvInterface> ReflectSpirv(absl::Span<const uint32_t> words);

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_SPIRV_REFLECT_H_
