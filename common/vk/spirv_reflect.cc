#include "common/vk/spirv_reflect.h"

#include <algorithm>
#include <map>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"

namespace duet::vk {
namespace {

// The SPIR-V numbers this parser uses (SPIR-V 1.x unified specification).
constexpr uint32_t kMagic = 0x07230203;
enum Op : uint32_t {
  kOpExecutionMode = 16,
  kOpTypeBool = 20,
  kOpTypeInt = 21,
  kOpTypeFloat = 22,
  kOpTypeVector = 23,
  kOpTypeMatrix = 24,
  kOpTypeArray = 28,
  kOpTypeRuntimeArray = 29,
  kOpTypeStruct = 30,
  kOpTypeImage = 25,
  kOpTypeSampledImage = 27,
  kOpTypePointer = 32,
  kOpConstant = 43,
  kOpSpecConstantTrue = 48,
  kOpSpecConstantFalse = 49,
  kOpSpecConstant = 50,
  kOpSpecConstantComposite = 51,
  kOpVariable = 59,
  kOpDecorate = 71,
  kOpMemberDecorate = 72,
  kOpExecutionModeId = 331,
};
enum Decoration : uint32_t {
  kSpecId = 1,
  kBufferBlock = 3,
  kArrayStride = 6,
  kMatrixStride = 7,
  kBuiltIn = 11,
  kBinding = 33,
  kDescriptorSet = 34,
  kOffset = 35,
};
constexpr uint32_t kBuiltInWorkgroupSize = 25;
constexpr uint32_t kExecutionModeLocalSize = 17;
constexpr uint32_t kExecutionModeLocalSizeId = 38;
constexpr uint32_t kDimBuffer = 5;
enum StorageClass : uint32_t {
  kStorageUniformConstant = 0,
  kStorageUniform = 2,
  kStoragePushConstant = 9,
  kStorageStorageBuffer = 12,
};

struct Type {
  uint32_t opcode = 0;
  std::vector<uint32_t> operands;  // the instruction's words after the result id
};

struct Module {
  std::unordered_map<uint32_t, Type> types;
  std::unordered_map<uint32_t, uint32_t> constants;      // id -> 32-bit value (scalars)
  std::unordered_map<uint32_t, uint32_t> spec_ids;       // id -> SpecId
  std::unordered_map<uint32_t, uint32_t> array_strides;  // type id -> ArrayStride
  std::unordered_map<uint32_t, uint32_t> bindings;       // variable id -> Binding
  std::unordered_map<uint32_t, uint32_t> sets;           // variable id -> DescriptorSet
  std::unordered_set<uint32_t> buffer_blocks;            // struct ids decorated BufferBlock
  // (struct id, member) -> Offset / MatrixStride.
  std::unordered_map<uint64_t, uint32_t> member_offsets;
  std::unordered_map<uint64_t, uint32_t> member_matrix_strides;
  uint32_t workgroup_size_id = 0;                                  // BuiltIn WorkgroupSize target
  std::unordered_map<uint32_t, std::vector<uint32_t>> composites;  // spec composites
  std::vector<std::pair<uint32_t, uint32_t>> variables;  // (pointer type id, storage class)
  std::vector<uint32_t> variable_ids;
  std::array<uint32_t, 3> local_size_ids = {0, 0, 0};  // LocalSizeId operands
};

uint64_t MemberKey(uint32_t id, uint32_t member) { return (uint64_t{id} << 32) | member; }

// Byte size of a type as laid out in a block. `matrix_stride` applies when it is a matrix.
absl::StatusOr<uint32_t> SizeOf(const Module& m, uint32_t type_id, uint32_t matrix_stride,
                                int depth) {
  if (depth > 16) return absl::InvalidArgumentError("SPIR-V type nesting too deep");
  auto it = m.types.find(type_id);
  if (it == m.types.end()) {
    return absl::InvalidArgumentError(absl::StrCat("SPIR-V: unknown type id ", type_id));
  }
  const Type& t = it->second;
  auto operand = [&](size_t i) { return i < t.operands.size() ? t.operands[i] : 0u; };
  switch (t.opcode) {
    case kOpTypeBool:
      return 4u;
    case kOpTypeInt:
    case kOpTypeFloat:
      return operand(0) / 8;
    case kOpTypeVector: {
      absl::StatusOr<uint32_t> component = SizeOf(m, operand(0), 0, depth + 1);
      if (!component.ok()) return component.status();
      return *component * operand(1);
    }
    case kOpTypeMatrix: {
      absl::StatusOr<uint32_t> column = SizeOf(m, operand(0), 0, depth + 1);
      if (!column.ok()) return column.status();
      const uint32_t stride = matrix_stride > 0 ? matrix_stride : *column;
      return stride * operand(1);
    }
    case kOpTypeArray: {
      auto length = m.constants.find(operand(1));
      auto stride = m.array_strides.find(type_id);
      if (length == m.constants.end() || stride == m.array_strides.end()) {
        return absl::InvalidArgumentError("SPIR-V: array without constant length or ArrayStride");
      }
      return length->second * stride->second;
    }
    case kOpTypeStruct: {
      uint32_t size = 0;
      for (uint32_t i = 0; i < t.operands.size(); ++i) {
        auto offset = m.member_offsets.find(MemberKey(type_id, i));
        if (offset == m.member_offsets.end()) {
          return absl::InvalidArgumentError("SPIR-V: block member without an Offset");
        }
        auto stride = m.member_matrix_strides.find(MemberKey(type_id, i));
        absl::StatusOr<uint32_t> member =
            SizeOf(m, t.operands[i], stride == m.member_matrix_strides.end() ? 0 : stride->second,
                   depth + 1);
        if (!member.ok()) return member.status();
        size = std::max(size, offset->second + *member);
      }
      return size;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("SPIR-V: cannot size a type with opcode ", t.opcode));
  }
}

}  // namespace

// The texel component type when `type_id` is a sampled image of dimension Buffer that is read
// through a sampler (Sampled = 1): a uniform texel buffer. nullopt for anything else.
std::optional<SpirvInterface::TexelComponent> UniformTexelComponent(const Module& m,
                                                                    uint32_t type_id) {
  auto sampled = m.types.find(type_id);
  if (sampled == m.types.end() || sampled->second.opcode != kOpTypeSampledImage ||
      sampled->second.operands.empty()) {
    return std::nullopt;
  }
  auto image = m.types.find(sampled->second.operands[0]);
  // OpTypeImage operands after the result id: sampled type, Dim, Depth, Arrayed, MS, Sampled,
  // Image Format.
  if (image == m.types.end() || image->second.opcode != kOpTypeImage ||
      image->second.operands.size() < 6 || image->second.operands[1] != kDimBuffer ||
      image->second.operands[5] != 1) {
    return std::nullopt;
  }
  auto component = m.types.find(image->second.operands[0]);
  if (component == m.types.end()) return std::nullopt;
  if (component->second.opcode == kOpTypeFloat) return SpirvInterface::TexelComponent::kFloat;
  if (component->second.opcode != kOpTypeInt || component->second.operands.size() < 2) {
    return std::nullopt;
  }
  return component->second.operands[1] != 0 ? SpirvInterface::TexelComponent::kInt
                                            : SpirvInterface::TexelComponent::kUint;
}

absl::StatusOr<SpirvInterface> ReflectSpirv(absl::Span<const uint32_t> words) {
  if (words.size() < 5 || words[0] != kMagic) {
    return absl::InvalidArgumentError("not a SPIR-V module (bad magic number)");
  }
  Module m;
  SpirvInterface out;
  for (size_t pos = 5; pos < words.size();) {
    const uint32_t count = words[pos] >> 16;
    const uint32_t opcode = words[pos] & 0xffff;
    if (count == 0 || pos + count > words.size()) {
      return absl::InvalidArgumentError(absl::StrCat("truncated SPIR-V instruction at word ", pos));
    }
    const uint32_t* w = words.data() + pos + 1;  // operands (none when count == 1)
    const uint32_t n = count - 1;
    switch (opcode) {
      case kOpExecutionMode:
        if (n >= 5 && w[1] == kExecutionModeLocalSize) out.local_size = {w[2], w[3], w[4]};
        break;
      case kOpExecutionModeId:
        if (n >= 5 && w[1] == kExecutionModeLocalSizeId) m.local_size_ids = {w[2], w[3], w[4]};
        break;
      case kOpTypeBool:
      case kOpTypeInt:
      case kOpTypeFloat:
      case kOpTypeVector:
      case kOpTypeMatrix:
      case kOpTypeArray:
      case kOpTypeRuntimeArray:
      case kOpTypeStruct:
      case kOpTypeImage:
      case kOpTypeSampledImage:
      case kOpTypePointer:
        if (n >= 1) m.types[w[0]] = Type{opcode, std::vector<uint32_t>(w + 1, w + n)};
        break;
      case kOpConstant:
      case kOpSpecConstant:
        if (n >= 3) m.constants[w[1]] = w[2];
        break;
      case kOpSpecConstantTrue:
      case kOpSpecConstantFalse:
        if (n >= 2) m.constants[w[1]] = opcode == kOpSpecConstantTrue ? 1u : 0u;
        break;
      case kOpSpecConstantComposite:
        if (n >= 2) m.composites[w[1]] = std::vector<uint32_t>(w + 2, w + n);
        break;
      case kOpVariable:
        if (n >= 3) {
          m.variables.emplace_back(w[0], w[2]);
          m.variable_ids.push_back(w[1]);
        }
        break;
      case kOpDecorate:
        if (n >= 2) {
          const uint32_t target = w[0];
          const uint32_t literal = n >= 3 ? w[2] : 0;
          switch (w[1]) {
            case kSpecId:
              m.spec_ids[target] = literal;
              break;
            case kArrayStride:
              m.array_strides[target] = literal;
              break;
            case kBufferBlock:
              m.buffer_blocks.insert(target);
              break;
            case kBuiltIn:
              if (literal == kBuiltInWorkgroupSize) m.workgroup_size_id = target;
              break;
            case kBinding:
              m.bindings[target] = literal;
              break;
            case kDescriptorSet:
              m.sets[target] = literal;
              break;
            default:
              break;
          }
        }
        break;
      case kOpMemberDecorate:
        if (n >= 4 && w[2] == kOffset) m.member_offsets[MemberKey(w[0], w[1])] = w[3];
        if (n >= 4 && w[2] == kMatrixStride) {
          m.member_matrix_strides[MemberKey(w[0], w[1])] = w[3];
        }
        break;
      default:
        break;
    }
    pos += count;
  }

  // Variables: the push-constant block and the descriptor bindings.
  for (size_t i = 0; i < m.variables.size(); ++i) {
    const auto [pointer_type, storage] = m.variables[i];
    const uint32_t id = m.variable_ids[i];
    auto pointer = m.types.find(pointer_type);
    const uint32_t pointee = (pointer != m.types.end() && pointer->second.operands.size() >= 2)
                                 ? pointer->second.operands[1]
                                 : 0;
    if (storage == kStoragePushConstant) {
      absl::StatusOr<uint32_t> size = SizeOf(m, pointee, 0, 0);
      if (!size.ok()) return size.status();
      out.push_constant_bytes = std::max(out.push_constant_bytes, *size);
      continue;
    }
    auto binding = m.bindings.find(id);
    if (binding == m.bindings.end()) continue;  // not a descriptor
    auto set = m.sets.find(id);
    const bool set0 = set == m.sets.end() || set->second == 0;
    // Arrays of buffers (binding arrays) are not part of the convention.
    uint32_t block = pointee;
    const bool is_struct = m.types.count(block) && m.types.at(block).opcode == kOpTypeStruct;
    const bool storage_buffer =
        is_struct && (storage == kStorageStorageBuffer ||
                      (storage == kStorageUniform && m.buffer_blocks.count(block) > 0));
    if (set0 && storage_buffer) {
      out.storage_buffer_bindings.push_back(binding->second);
    } else if (set0 && storage == kStorageUniformConstant) {
      std::optional<SpirvInterface::TexelComponent> texel = UniformTexelComponent(m, pointee);
      if (texel.has_value()) {
        out.texel_buffer_bindings.emplace_back(binding->second, *texel);
      } else {
        out.has_other_descriptors = true;
      }
    } else {
      out.has_other_descriptors = true;
    }
  }
  std::sort(out.storage_buffer_bindings.begin(), out.storage_buffer_bindings.end());
  std::sort(out.texel_buffer_bindings.begin(), out.texel_buffer_bindings.end());

  // Workgroup size: the WorkgroupSize built-in (which overrides LocalSize) or LocalSizeId.
  std::array<uint32_t, 3> size_ids = m.local_size_ids;
  if (m.workgroup_size_id != 0) {
    auto composite = m.composites.find(m.workgroup_size_id);
    if (composite != m.composites.end() && composite->second.size() == 3) {
      size_ids = {composite->second[0], composite->second[1], composite->second[2]};
    }
  }
  for (size_t d = 0; d < 3; ++d) {
    if (size_ids[d] == 0) continue;
    auto value = m.constants.find(size_ids[d]);
    if (value != m.constants.end()) out.local_size[d] = value->second;
    auto spec = m.spec_ids.find(size_ids[d]);
    if (spec != m.spec_ids.end()) out.local_size_spec_ids[d] = static_cast<int32_t>(spec->second);
  }

  // Spec ids and their defaults. Several constants may share a SpecId: `layout(local_size_x_id
  // = 0) in;` next to `layout(constant_id = 0) const uint WG = 256;` gives a local-size constant
  // whose default is 1 and a declared one whose default is 256. The declared constant's default
  // wins; the local-size constant's default counts only when nothing else declares the id.
  auto is_size_constant = [&](uint32_t id) {
    return id == size_ids[0] || id == size_ids[1] || id == size_ids[2];
  };
  std::map<uint32_t, uint32_t> defaults;       // from declared constants
  std::map<uint32_t, uint32_t> size_defaults;  // from local-size constants
  for (const auto& [id, spec_id] : m.spec_ids) {
    out.spec_ids.push_back(spec_id);
    auto value = m.constants.find(id);
    if (value == m.constants.end()) continue;
    (is_size_constant(id) ? size_defaults : defaults)[spec_id] = value->second;
  }
  for (const auto& [spec_id, value] : size_defaults) defaults.emplace(spec_id, value);
  out.spec_defaults.assign(defaults.begin(), defaults.end());
  std::sort(out.spec_ids.begin(), out.spec_ids.end());
  out.spec_ids.erase(std::unique(out.spec_ids.begin(), out.spec_ids.end()), out.spec_ids.end());
  // The local size as it will be without specialization.
  for (size_t d = 0; d < 3; ++d) {
    if (out.local_size_spec_ids[d] < 0) continue;
    auto value = defaults.find(static_cast<uint32_t>(out.local_size_spec_ids[d]));
    if (value != defaults.end()) out.local_size[d] = value->second;
  }
  return out;
}

}  // namespace duet::vk
