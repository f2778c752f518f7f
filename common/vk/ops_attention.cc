#include "common/vk/ops_attention.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/vk/dispatch_rows.h"

namespace duet::vk {
namespace {

// One workgroup per row along x, without Groups1D.
constexpr uint64_t kMaxRowsPerDispatch = 65535;

using kv::CacheDtype;
using kv::KvLayout;

constexpr uint32_t kSeqWords = 8;         // DUET_SEQ_WORDS in kv_cache.glsl
constexpr uint32_t kWriteWorkgroup = 64;  // kv_write.comp's default constant_id 0
constexpr uint32_t kSealWorkgroup = 64;
constexpr uint32_t kReduceWorkgroup = 32;
constexpr int64_t kMaxTopK = 64;

// Push-constant blocks; each mirrors the `Push` block of its shader.
struct KvWritePush {
  uint32_t num_kv_heads;
  uint32_t head_dim;
  uint32_t block_size;
  uint32_t layer;
  uint32_t num_layers;
};
DUET_VK_PUSH_CONSTANTS(KvWritePush);

struct KvSealPush {
  uint32_t num_kv_heads;
  uint32_t layer;
  uint32_t num_layers;
};
DUET_VK_PUSH_CONSTANTS(KvSealPush);

struct PrefillPush {
  uint32_t num_heads;
  uint32_t num_kv_heads;
  uint32_t layer;
  uint32_t num_layers;
  float scale;
};
DUET_VK_PUSH_CONSTANTS(PrefillPush);

struct DecodePush {
  uint32_t num_heads;
  uint32_t num_kv_heads;
  uint32_t layer;
  uint32_t num_layers;
  float scale;
  uint32_t part_size;
  uint32_t max_parts;
};
DUET_VK_PUSH_CONSTANTS(DecodePush);

struct ReducePush {
  uint32_t num_heads;
  uint32_t head_dim;
  uint32_t part_size;
  uint32_t max_parts;
};
DUET_VK_PUSH_CONSTANTS(ReducePush);

struct ArgmaxPush {
  uint32_t rows;
  uint32_t vocab;
};
DUET_VK_PUSH_CONSTANTS(ArgmaxPush);

struct TopKPush {
  uint32_t rows;
  uint32_t vocab;
  uint32_t k;
};
DUET_VK_PUSH_CONSTANTS(TopKPush);

uint64_t U64(int64_t v) { return static_cast<uint64_t>(v); }
uint32_t U32(int64_t v) { return static_cast<uint32_t>(v); }
bool IsPowerOfTwo(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }
uint32_t FloorPowerOfTwo(int64_t x) {
  uint32_t p = 1;
  while (static_cast<int64_t>(p) * 2 <= x) p *= 2;
  return p;
}
uint32_t CeilPowerOfTwo(int64_t x) {
  uint32_t p = 1;
  while (static_cast<int64_t>(p) < x) p *= 2;
  return p;
}

absl::Status CheckView(BufferView view, uint64_t bytes, const char* op, const char* name) {
  if (view.size < bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " holds ", view.size, " bytes, the shape needs ", bytes));
  }
  return absl::OkStatus();
}

// Rows of the batch tensors the step uses: max over sequences of q_offset + num_new.
int64_t BatchRows(absl::Span<const AttnSequence> seqs) {
  int64_t rows = 0;
  for (const AttnSequence& s : seqs) rows = std::max(rows, s.q_offset + s.num_new);
  return rows;
}

int64_t MaxNew(absl::Span<const AttnSequence> seqs) {
  int64_t n = 0;
  for (const AttnSequence& s : seqs) n = std::max(n, s.num_new);
  return n;
}

// Checks everything the kernels trust: sizes, block ids, tail slots and view sizes.
absl::Status CheckStep(const AttnStep& step, const char* op) {
  const KvLayout& layout = step.layout;
  if (absl::Status status = layout.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", status.message()));
  }
  if (step.layer < 0 || step.layer >= layout.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": layer ", step.layer, " out of range [0, ", layout.num_layers, ")"));
  }
  if (step.seqs.empty() || step.seqs.size() > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": batches hold 1..65535 sequences, got ", step.seqs.size()));
  }
  const bool fp8 = layout.dtype == CacheDtype::kFp8E4M3;
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    const AttnSequence& s = step.seqs[i];
    if (s.q_offset < 0 || s.num_new < 0 || s.num_cached < 0 ||
        s.num_cached + s.num_new > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": sequence ", i, " has q_offset ",
                                                     s.q_offset, ", num_new ", s.num_new,
                                                     ", num_cached ", s.num_cached));
    }
    const int64_t end = s.num_cached + s.num_new;
    const int64_t blocks = (end + layout.block_size - 1) / layout.block_size;
    if (static_cast<int64_t>(s.block_table.size()) < blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": sequence ", i, " has ", s.block_table.size(),
                       " blocks; positions [0, ", end, ") need ", blocks));
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const int32_t id = s.block_table[static_cast<size_t>(b)];
      if (id < 0 || id >= layout.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat(op, ": sequence ", i, " block ", b, " = ",
                                                       id, " not in [0, ", layout.num_blocks, ")"));
      }
    }
    if (fp8 && (s.tail_slot < 0 || s.tail_slot >= layout.num_tail_slots)) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": sequence ", i, " tail slot ",
                                                     s.tail_slot, " not in [0, ",
                                                     layout.num_tail_slots, ")"));
    }
  }
  const uint64_t kv_row = U64(layout.num_kv_heads * layout.head_dim) * 4;
  const uint64_t rows = U64(BatchRows(step.seqs));
  DUET_RETURN_IF_ERROR(CheckView(step.k_new, rows * kv_row, op, "k_new"));
  DUET_RETURN_IF_ERROR(CheckView(step.v_new, rows * kv_row, op, "v_new"));
  DUET_RETURN_IF_ERROR(CheckView(step.cache.k_data, U64(layout.layer_data_bytes()), op, "k_data"));
  DUET_RETURN_IF_ERROR(CheckView(step.cache.v_data, U64(layout.layer_data_bytes()), op, "v_data"));
  if (fp8) {
    DUET_RETURN_IF_ERROR(
        CheckView(step.cache.k_scales, U64(layout.layer_scale_bytes()), op, "k_scales"));
    DUET_RETURN_IF_ERROR(
        CheckView(step.cache.v_scales, U64(layout.layer_scale_bytes()), op, "v_scales"));
    DUET_RETURN_IF_ERROR(CheckView(step.cache.tail, U64(layout.tail_bytes()), op, "tail"));
  }
  uint64_t table_words = kSeqWords * step.seqs.size();
  for (const AttnSequence& s : step.seqs) table_words += s.block_table.size();
  return CheckView(step.seq_table, table_words * 4, op, "seq_table");
}

// The scale and tail bindings, or stand-ins (never read) for F32/F16 caches.
KvLayerViews BoundCache(const AttnStep& step) {
  KvLayerViews views = step.cache;
  if (step.layout.dtype != CacheDtype::kFp8E4M3) {
    views.k_scales = views.v_scales = views.tail = step.seq_table;
  }
  return views;
}

KernelId ByDtype(CacheDtype dtype, KernelId f32, KernelId f16, KernelId fp8) {
  switch (dtype) {
    case CacheDtype::kF32:
      return f32;
    case CacheDtype::kF16:
      return f16;
    case CacheDtype::kFp8E4M3:
      return fp8;
  }
  return f32;
}

// The attention kernel for the resolved tiles: texel reads where asked for and every view the
// texel variant binds as a texel buffer (q, k_new, v_new, the cache data, and the FP8 tail)
// starts at the device's texel-buffer alignment and holds a whole texel.
KernelId AttnKernel(const Device& device, const AttnStep& step, const AttnTiles& t,
                    BufferView q, bool decode) {
  const CacheDtype dtype = step.layout.dtype;
  const auto fits = [&](const BufferView& v) {
    return v.offset % device.limits().min_texel_buffer_offset_alignment == 0 && v.size >= 16;
  };
  const bool texel = t.reads == AttnReads::kTexel && fits(q) && fits(step.k_new) &&
                     fits(step.v_new) && fits(step.cache.k_data) && fits(step.cache.v_data) &&
                     (dtype != CacheDtype::kFp8E4M3 || fits(step.cache.tail));
  if (decode) {
    return texel ? ByDtype(dtype, KernelId::kPagedAttnDecodeF32Texel,
                           KernelId::kPagedAttnDecodeF16Texel, KernelId::kPagedAttnDecodeFp8Texel)
                 : ByDtype(dtype, KernelId::kPagedAttnDecodeF32, KernelId::kPagedAttnDecodeF16,
                           KernelId::kPagedAttnDecodeFp8);
  }
  return texel ? ByDtype(dtype, KernelId::kFlashAttnPrefillF32Texel,
                         KernelId::kFlashAttnPrefillF16Texel, KernelId::kFlashAttnPrefillFp8Texel)
               : ByDtype(dtype, KernelId::kFlashAttnPrefillF32, KernelId::kFlashAttnPrefillF16,
                         KernelId::kFlashAttnPrefillFp8);
}

uint64_t SharedBytes(const AttnTiles& t, int64_t head_dim) {
  // K and V tiles (f32) and the scores, one column per invocation.
  return 2 * U64(t.keys) * U64(head_dim) * 4 + U64(t.keys) * U64(t.workgroup) * 4;
}

std::vector<uint32_t> SpecConstants(const AttnTiles& t, const KvLayout& layout, int64_t group) {
  return {t.workgroup, U32(layout.head_dim),   t.q_pos,        U32(group),
          t.keys,      U32(layout.block_size), t.lanes_per_row, t.rows_per_lane};
}

// Query tiles of a sequence for tiles of q_pos positions aligned to absolute positions, or
// (texel decode: paged_attn_decode.comp's ATTN_TILES_AT_CACHED) starting at its first pending
// position.
int64_t QueryTiles(const AttnSequence& s, uint32_t q_pos, bool at_cached = false) {
  if (s.num_new == 0) return 0;
  if (at_cached) return (s.num_new + q_pos - 1) / q_pos;
  return (s.num_cached + s.num_new - 1) / q_pos - s.num_cached / q_pos + 1;
}

}  // namespace

std::vector<uint32_t> EncodeSequenceTable(absl::Span<const AttnSequence> seqs) {
  std::vector<uint32_t> words(kSeqWords * seqs.size(), 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const AttnSequence& s = seqs[i];
    uint32_t* w = words.data() + kSeqWords * i;
    w[0] = U32(s.q_offset);
    w[1] = U32(s.num_new);
    w[2] = U32(s.num_cached);
    w[3] = static_cast<uint32_t>(s.tail_slot);
    w[4] = U32(static_cast<int64_t>(words.size()));
    for (int32_t id : s.block_table) words.push_back(static_cast<uint32_t>(id));
  }
  return words;
}

absl::StatusOr<AttnTiles> ResolveAttnTiles(const Device& device, const KvLayout& layout,
                                           int64_t num_heads, bool decode, int64_t max_new,
                                           const AttnTiles& requested) {
  constexpr const char* kOp = "ResolveAttnTiles";
  const DeviceLimits& limits = device.limits();
  const int64_t d = layout.head_dim;
  const int64_t d4 = d / 4;
  if (num_heads <= 0 || num_heads % layout.num_kv_heads != 0 || d <= 0 || d % 4 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": num_heads ", num_heads, " must be a multiple of num_kv_heads ",
                     layout.num_kv_heads, ", head_dim ", d, " a multiple of 4"));
  }
  const int64_t group = num_heads / layout.num_kv_heads;
  const bool fp8 = layout.dtype == CacheDtype::kFp8E4M3;
  const bool cpu = device.info().type == DeviceType::kCpu;
  const int64_t subgroup = std::max<int64_t>(1, limits.subgroup_size);
  const int64_t max_wg = std::min<int64_t>(limits.max_workgroup_invocations, 1024);
  AttnTiles t = requested;
  if (t.reads == AttnReads::kDefault) t.reads = cpu ? AttnReads::kTexel : AttnReads::kStorage;
  const bool staged = t.reads == AttnReads::kStorage;
  if (t.keys == 0) {
    t.keys = d <= 32 ? 32 : 16;
    // The texel path reads a key tile inside one pool block with one straight-line loop; a tile
    // that spans blocks goes key by key through the general path (several times slower per key
    // on llvmpipe), and without staging a smaller tile costs nothing. Block sizes are powers of
    // two.
    if (t.reads == AttnReads::kTexel) t.keys = std::min<uint32_t>(t.keys, U32(layout.block_size));
  }
  if (t.q_pos == 0) {
    // Rows per tile: enough to amortize staging K/V (prefill); decode takes its few positions.
    const int64_t target_rows = cpu ? 64 : 32;
    t.q_pos = decode ? CeilPowerOfTwo(std::max<int64_t>(1, max_new))
                     : FloorPowerOfTwo(std::max<int64_t>(1, target_rows / group));
    if (fp8) t.q_pos = std::min(t.q_pos, U32(layout.block_size));
  }
  const int64_t rows = int64_t{t.q_pos} * group;
  if (t.lanes_per_row == 0) {
    // GPUs: 8 lanes per row keep q and acc small in registers. CPU devices: rows side by side in
    // the SIMD lanes, and when a tile has fewer rows than lanes, the spare lanes split head_dim.
    const int64_t want = cpu ? std::max<int64_t>(1, subgroup / rows) : 8;
    t.lanes_per_row = FloorPowerOfTwo(std::min<int64_t>({want, d4, subgroup}));
  }
  if (t.rows_per_lane == 0) {
    // CPU devices, texel decode with small heads: a tile with more rows than a SIMD register
    // (a verify's k + 1 positions times the query heads of a KV head) gives each invocation
    // several rows, so each key is loaded and decoded once per invocation and the workgroup
    // runs in one pass instead of several. Larger heads keep one row (their per-row state
    // already fills the registers).
    t.rows_per_lane = 1;
    const int64_t lanes = int64_t{t.q_pos} * group * t.lanes_per_row;
    if (cpu && decode && !staged && d4 <= 4 && lanes > subgroup) {
      t.rows_per_lane = U32(std::min<int64_t>(4, (lanes + subgroup - 1) / subgroup));
    }
  }
  if (requested.q_pos == 0) {
    while (t.q_pos > 1 &&
           int64_t{t.q_pos} * group * t.lanes_per_row > max_wg * int64_t{t.rows_per_lane}) {
      t.q_pos /= 2;
    }
  }
  const int64_t quantum = std::max<int64_t>(8, subgroup);
  const auto fit_workgroup = [&] {
    const int64_t rpl = std::max<int64_t>(1, t.rows_per_lane);
    const int64_t lanes = (int64_t{t.q_pos} * group * t.lanes_per_row + rpl - 1) / rpl;
    if (requested.workgroup == 0) t.workgroup = U32((lanes + quantum - 1) / quantum * quantum);
  };
  fit_workgroup();
  // Shrink chosen sizes until the tiles fit in shared memory (key tile first).
  while (staged && SharedBytes(t, d) > limits.max_shared_memory_bytes) {
    if (requested.keys == 0 && t.keys > 8) {
      t.keys /= 2;
    } else if (requested.q_pos == 0 && t.q_pos > 1) {
      t.q_pos /= 2;
    } else {
      break;
    }
    fit_workgroup();
  }
  const int64_t lanes = int64_t{t.q_pos} * group * t.lanes_per_row;
  std::string problem;
  if (!IsPowerOfTwo(t.lanes_per_row) || t.lanes_per_row > subgroup || d4 % t.lanes_per_row != 0) {
    problem = "lanes_per_row must be a power of two <= the subgroup size dividing head_dim / 4";
  } else if (t.rows_per_lane == 0 || t.rows_per_lane > 4 || (staged && t.rows_per_lane != 1)) {
    problem = "rows_per_lane must be 1 (storage reads) or 1..4 (texel reads)";
  } else if (int64_t{t.workgroup} * t.rows_per_lane < lanes ||
             t.workgroup % t.lanes_per_row != 0) {
    problem = "workgroup must be a multiple of lanes_per_row and hold q_pos * group rows";
  } else if (t.keys == 0) {
    problem = "keys must be positive";
  } else if (!IsPowerOfTwo(t.q_pos)) {
    problem = "q_pos must be a power of two";
  } else if (fp8 && layout.block_size % t.q_pos != 0) {
    problem = "fp8 needs block_size % q_pos == 0";
  } else if (t.workgroup > limits.max_workgroup_invocations) {
    problem = "workgroup above the device limit";
  } else if (staged && SharedBytes(t, d) > limits.max_shared_memory_bytes) {
    problem = absl::StrCat("tiles need ", SharedBytes(t, d),
                           " bytes of shared memory, the "
                           "device has ",
                           limits.max_shared_memory_bytes);
  }
  if (!problem.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": ", problem, " (workgroup ", t.workgroup, ", q_pos ", t.q_pos, ", keys ", t.keys,
        ", lanes_per_row ", t.lanes_per_row, ", rows_per_lane ", t.rows_per_lane, ", head_dim ",
        d, ", group ", group, ")"));
  }
  return t;
}

absl::Status RecordKvSeal(CommandList& cl, const Kernels& kernels, const AttnStep& step) {
  constexpr const char* kOp = "RecordKvSeal";
  DUET_RETURN_IF_ERROR(CheckStep(step, kOp));
  const KvLayout& layout = step.layout;
  if (layout.dtype != CacheDtype::kFp8E4M3) return absl::OkStatus();
  int64_t max_blocks = 0;
  for (const AttnSequence& s : step.seqs) {
    max_blocks = std::max(max_blocks, (s.num_cached + s.num_new) / layout.block_size -
                                          s.num_cached / layout.block_size);
  }
  if (max_blocks == 0) return absl::OkStatus();
  if (U64(layout.tile_elements()) * 4 > kernels.device().limits().max_shared_memory_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": a ", layout.block_size, " x ",
                                                   layout.head_dim,
                                                   " tile does not fit in shared memory"));
  }
  // CPU devices: a one-subgroup workgroup, which needs no barrier (kv_seal.comp).
  const uint32_t subgroup = kernels.device().limits().subgroup_size;
  const bool one_subgroup =
      kernels.device().info().type == DeviceType::kCpu && subgroup >= 8 && subgroup <= 64;
  const uint32_t spec[] = {one_subgroup ? subgroup : kSealWorkgroup, U32(layout.head_dim),
                           U32(layout.block_size), one_subgroup ? 1u : 0u};
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline,
                        kernels.Get<KvSealPush>(KernelId::kKvSealFp8, spec));
  return cl.Dispatch(*pipeline,
                     {step.k_new, step.v_new, step.cache.tail, step.cache.k_data, step.cache.v_data,
                      step.cache.k_scales, step.cache.v_scales, step.seq_table},
                     KvSealPush{U32(layout.num_kv_heads), U32(step.layer), U32(layout.num_layers)},
                     Groups{U32(max_blocks), U32(layout.num_kv_heads),
                            U32(2 * static_cast<int64_t>(step.seqs.size()))});
}

absl::Status RecordKvCommit(CommandList& cl, const Kernels& kernels, const AttnStep& step) {
  constexpr const char* kOp = "RecordKvCommit";
  DUET_RETURN_IF_ERROR(CheckStep(step, kOp));
  const KvLayout& layout = step.layout;
  const bool fp8 = layout.dtype == CacheDtype::kFp8E4M3;
  int64_t max_positions = 0;
  for (const AttnSequence& s : step.seqs) {
    const int64_t end = s.num_cached + s.num_new;
    const int64_t first =
        fp8 ? std::max(s.num_cached, end / layout.block_size * layout.block_size) : s.num_cached;
    max_positions = std::max(max_positions, end - first);
  }
  if (max_positions == 0) return absl::OkStatus();
  const KernelId id =
      ByDtype(layout.dtype, KernelId::kKvWriteF32, KernelId::kKvWriteF16, KernelId::kKvWriteFp8);
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline, kernels.Get<KvWritePush>(id));
  const BufferView k_dst = fp8 ? step.cache.tail : step.cache.k_data;
  const BufferView v_dst = fp8 ? step.cache.tail : step.cache.v_data;
  const uint64_t units = U64(max_positions) * U64(layout.num_kv_heads) * U64(layout.head_dim / 4);
  const KvWritePush push{U32(layout.num_kv_heads), U32(layout.head_dim), U32(layout.block_size),
                         U32(step.layer), U32(layout.num_layers)};
  return cl.Dispatch(
      *pipeline, {step.k_new, step.v_new, k_dst, v_dst, step.seq_table}, push,
      Groups{U32(static_cast<int64_t>((units + kWriteWorkgroup - 1) / kWriteWorkgroup)),
             U32(static_cast<int64_t>(step.seqs.size())), 1});
}

absl::Status RecordFlashAttnPrefill(CommandList& cl, const Kernels& kernels, const AttnStep& step,
                                    int64_t num_heads, BufferView q, BufferView out,
                                    const AttnTiles& tiles) {
  constexpr const char* kOp = "RecordFlashAttnPrefill";
  DUET_RETURN_IF_ERROR(CheckStep(step, kOp));
  const KvLayout& layout = step.layout;
  DUET_ASSIGN_OR_RETURN(const AttnTiles t,
                        ResolveAttnTiles(kernels.device(), layout, num_heads,
                                         /*decode=*/false, MaxNew(step.seqs), tiles));
  const uint64_t q_bytes = U64(BatchRows(step.seqs)) * U64(num_heads * layout.head_dim) * 4;
  DUET_RETURN_IF_ERROR(CheckView(q, q_bytes, kOp, "q"));
  DUET_RETURN_IF_ERROR(CheckView(out, q_bytes, kOp, "out"));
  int64_t max_tiles = 0;
  for (const AttnSequence& s : step.seqs) max_tiles = std::max(max_tiles, QueryTiles(s, t.q_pos));
  if (max_tiles == 0) return absl::OkStatus();
  if (max_tiles > kernels.device().limits().max_workgroup_count[0]) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": ", max_tiles,
                                                   " query tiles per "
                                                   "sequence; split the chunk"));
  }
  const int64_t group = num_heads / layout.num_kv_heads;
  const std::vector<uint32_t> spec = SpecConstants(t, layout, group);
  const KvLayerViews c = BoundCache(step);
  const KernelId id = AttnKernel(kernels.device(), step, t, q, /*decode=*/false);
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline, kernels.Get<PrefillPush>(id, spec));
  const PrefillPush push{U32(num_heads), U32(layout.num_kv_heads), U32(step.layer),
                         U32(layout.num_layers),
                         static_cast<float>(1.0 / std::sqrt(static_cast<double>(layout.head_dim)))};
  return cl.Dispatch(*pipeline,
                     {q, step.k_new, step.v_new, c.k_data, c.v_data, c.k_scales, c.v_scales, c.tail,
                      step.seq_table, out},
                     push,
                     Groups{U32(max_tiles), U32(layout.num_kv_heads),
                            U32(static_cast<int64_t>(step.seqs.size()))});
}

namespace {

int64_t MaxParts(const AttnStep& step, uint32_t part_size) {
  int64_t parts = 1;
  for (const AttnSequence& s : step.seqs) {
    parts = std::max(parts, (s.num_cached + s.num_new + part_size - 1) / part_size);
  }
  return parts;
}

// Byte offset of the (m, l) pairs in the decode scratch: after the accumulators, aligned.
uint64_t MlOffset(uint64_t acc_bytes) { return (acc_bytes + 255) / 256 * 256; }

uint64_t AccBytes(const AttnStep& step, int64_t num_heads, int64_t max_parts) {
  return U64(BatchRows(step.seqs)) * U64(num_heads) * U64(max_parts) * U64(step.layout.head_dim) *
         4;
}

}  // namespace

uint64_t PagedAttnDecodeScratchBytes(const AttnStep& step, int64_t num_heads,
                                     const DecodeOptions& options) {
  if (options.part_size == 0) return 0;
  const int64_t max_parts = MaxParts(step, options.part_size);
  const uint64_t ml = U64(BatchRows(step.seqs)) * U64(num_heads) * U64(max_parts) * 8;
  return MlOffset(AccBytes(step, num_heads, max_parts)) + ml;
}

absl::Status RecordPagedAttnDecode(CommandList& cl, const Kernels& kernels, const AttnStep& step,
                                   int64_t num_heads, BufferView q, BufferView scratch,
                                   BufferView out, const DecodeOptions& options) {
  constexpr const char* kOp = "RecordPagedAttnDecode";
  DUET_RETURN_IF_ERROR(CheckStep(step, kOp));
  const KvLayout& layout = step.layout;
  DUET_ASSIGN_OR_RETURN(const AttnTiles t,
                        ResolveAttnTiles(kernels.device(), layout, num_heads,
                                         /*decode=*/true, MaxNew(step.seqs), options.tiles));
  if (options.part_size == 0 || options.part_size % t.keys != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": part_size ", options.part_size,
                                                   " must be a positive multiple of the key tile ",
                                                   t.keys));
  }
  const uint64_t q_bytes = U64(BatchRows(step.seqs)) * U64(num_heads * layout.head_dim) * 4;
  DUET_RETURN_IF_ERROR(CheckView(q, q_bytes, kOp, "q"));
  DUET_RETURN_IF_ERROR(CheckView(out, q_bytes, kOp, "out"));
  DUET_RETURN_IF_ERROR(
      CheckView(scratch, PagedAttnDecodeScratchBytes(step, num_heads, options), kOp, "scratch"));
  int64_t max_tiles = 0;
  const bool at_cached = t.reads == AttnReads::kTexel;
  for (const AttnSequence& s : step.seqs) {
    max_tiles = std::max(max_tiles, QueryTiles(s, t.q_pos, at_cached));
  }
  if (max_tiles == 0) return absl::OkStatus();
  const int64_t max_parts = MaxParts(step, options.part_size);
  const uint64_t acc_bytes = AccBytes(step, num_heads, max_parts);
  const uint64_t ml_offset = MlOffset(acc_bytes);
  const BufferView acc = scratch.Sub(0, acc_bytes);
  const BufferView ml =
      scratch.Sub(ml_offset, U64(BatchRows(step.seqs)) * U64(num_heads) * U64(max_parts) * 8);
  const int64_t group = num_heads / layout.num_kv_heads;
  const std::vector<uint32_t> spec = SpecConstants(t, layout, group);
  const KvLayerViews c = BoundCache(step);
  const KernelId id = AttnKernel(kernels.device(), step, t, q, /*decode=*/true);
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline, kernels.Get<DecodePush>(id, spec));
  const DecodePush push{U32(num_heads),
                        U32(layout.num_kv_heads),
                        U32(step.layer),
                        U32(layout.num_layers),
                        static_cast<float>(1.0 / std::sqrt(static_cast<double>(layout.head_dim))),
                        options.part_size,
                        U32(max_parts)};
  DUET_RETURN_IF_ERROR(cl.Dispatch(*pipeline,
                                   {q, step.k_new, step.v_new, c.k_data, c.v_data, c.k_scales,
                                    c.v_scales, c.tail, step.seq_table, acc, ml, out},
                                   push,
                                   Groups{U32(max_parts), U32(layout.num_kv_heads * max_tiles),
                                          U32(static_cast<int64_t>(step.seqs.size()))}));
  // Rows within the first partition are done; the reduce finishes the others.
  if (max_parts == 1) return absl::OkStatus();
  const uint32_t reduce_spec[] = {kReduceWorkgroup};
  DUET_ASSIGN_OR_RETURN(const Pipeline* reduce,
                        kernels.Get<ReducePush>(KernelId::kPagedAttnReduce, reduce_spec));
  return cl.Dispatch(
      *reduce, {acc, ml, step.seq_table, out},
      ReducePush{U32(num_heads), U32(layout.head_dim), options.part_size, U32(max_parts)},
      Groups{U32(MaxNew(step.seqs)), U32(num_heads), U32(static_cast<int64_t>(step.seqs.size()))});
}

absl::Status RecordArgmax(CommandList& cl, const Kernels& kernels, BufferView logits, int64_t rows,
                          int64_t vocab, BufferView ids) {
  constexpr const char* kOp = "RecordArgmax";
  if (rows <= 0 || vocab <= 0 || vocab > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": rows ", rows, " and vocab ", vocab, " must be positive"));
  }
  DUET_RETURN_IF_ERROR(CheckView(logits, U64(rows) * U64(vocab) * 4, kOp, "logits"));
  DUET_RETURN_IF_ERROR(CheckView(ids, U64(rows) * 4, kOp, "ids"));
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline, kernels.Get<ArgmaxPush>(KernelId::kArgmaxF32));
  DUET_ASSIGN_OR_RETURN(
      const int64_t per,
      RowsPerDispatch(kernels.device().limits(), {vocab * 4, 4}, kMaxRowsPerDispatch, kOp));
  for (int64_t first = 0; first < rows; first += per) {
    const int64_t count = std::min(per, rows - first);
    DUET_RETURN_IF_ERROR(
        cl.Dispatch(*pipeline,
                    {logits.Sub(U64(first) * U64(vocab) * 4, U64(count) * U64(vocab) * 4),
                     ids.Sub(U64(first) * 4, U64(count) * 4)},
                    ArgmaxPush{U32(count), U32(vocab)}, Groups{U32(count), 1, 1}));
  }
  return absl::OkStatus();
}

absl::Status RecordTopK(CommandList& cl, const Kernels& kernels, BufferView logits, int64_t rows,
                        int64_t vocab, int64_t k, BufferView values, BufferView ids) {
  constexpr const char* kOp = "RecordTopK";
  if (rows <= 0 || vocab <= 0 || vocab > INT32_MAX || k < 1 || k > kMaxTopK) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": rows ", rows, ", vocab ", vocab,
                                                   " must be positive and k ", k, " in [1, ",
                                                   kMaxTopK, "]"));
  }
  DUET_RETURN_IF_ERROR(CheckView(logits, U64(rows) * U64(vocab) * 4, kOp, "logits"));
  DUET_RETURN_IF_ERROR(CheckView(values, U64(rows) * U64(k) * 4, kOp, "values"));
  DUET_RETURN_IF_ERROR(CheckView(ids, U64(rows) * U64(k) * 4, kOp, "ids"));
  DUET_ASSIGN_OR_RETURN(const Pipeline* pipeline, kernels.Get<TopKPush>(KernelId::kTopkF32));
  DUET_ASSIGN_OR_RETURN(
      const int64_t per,
      RowsPerDispatch(kernels.device().limits(), {vocab * 4, k * 4}, kMaxRowsPerDispatch, kOp));
  for (int64_t first = 0; first < rows; first += per) {
    const int64_t count = std::min(per, rows - first);
    const uint64_t out_offset = U64(first) * U64(k) * 4;
    const uint64_t out_bytes = U64(count) * U64(k) * 4;
    DUET_RETURN_IF_ERROR(
        cl.Dispatch(*pipeline,
                    {logits.Sub(U64(first) * U64(vocab) * 4, U64(count) * U64(vocab) * 4),
                     values.Sub(out_offset, out_bytes), ids.Sub(out_offset, out_bytes)},
                    TopKPush{U32(count), U32(vocab), U32(k)}, Groups{U32(count), 1, 1}));
  }
  return absl::OkStatus();
}

}  // namespace duet::vk
