// Host-side launches of the paged-KV-cache and attention kernels (shaders/kv_write.comp,
// kv_seal.comp, flash_attn_prefill.comp, paged_attn_decode.comp, paged_attn_reduce.comp) and of
// the sampling reductions (argmax.comp, topk.comp). Each Record* call checks its arguments,
// looks its pipelines up in `kernels` and records dispatches into `cl` (nothing runs until
// cl.Submit()). docs/kv-cache.md describes the cache; common/kv/paged_kv.h is the CPU oracle.
//
// One model step over a batch of sequences, per layer (after the K/V projections and RoPE):
//   1. RecordKvSeal            (FP8 only) seal the blocks this step's positions complete;
//   2. RecordFlashAttnPrefill  (many positions per sequence) or RecordPagedAttnDecode (few:
//                              1 for decode, k + 1 for speculative verification);
//   3. RecordKvCommit          store the accepted positions. For FP8 it must come after
//                              attention (it overwrites tail entries attention may read); for
//                              F32/F16 it may come before. For speculative verification, keep
//                              the step's K/V rows and commit them once acceptance is known,
//                              with num_new = the accepted count (a fresh sequence table).
// Errors: INVALID_ARGUMENT for bad shapes, block tables, tail slots or views too small, plus the
// errors of Kernels::Get and CommandList::Dispatch (e.g. a view above maxStorageBufferRange).
#ifndef DUET_COMMON_VK_OPS_ATTENTION_H_
#define DUET_COMMON_VK_OPS_ATTENTION_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/kv/paged_kv.h"
#include "common/vk/buffer.h"
#include "common/vk/command_list.h"
#include "common/vk/device.h"
#include "common/vk/pipeline.h"

namespace duet::vk {

// One sequence of a step, as the host knows it.
struct AttnSequence {
  int64_t q_offset = 0;    // batch row of its first pending position (rows of q, k_new, v_new)
  int64_t num_new = 0;     // pending positions this step (RecordKvCommit: positions to commit)
  int64_t num_cached = 0;  // committed positions; pending position i is num_cached + i
  int32_t tail_slot = -1;  // FP8: the sequence's tail slot; ignored otherwise
  // Block ids in position order, covering positions [0, num_cached + num_new).
  absl::Span<const int32_t> block_table;
};

// The sequence table the kernels read (shaders/include/kv_cache.glsl): 8 words per sequence,
// then the block tables. Upload it as is and pass the view as AttnStep::seq_table.
std::vector<uint32_t> EncodeSequenceTable(absl::Span<const AttnSequence> seqs);

// One layer's cache buffers, laid out as kv::KvLayout describes.
struct KvLayerViews {
  BufferView k_data;  // [num_blocks][num_kv_heads][block_size][head_dim], cache dtype
  BufferView v_data;
  BufferView k_scales;  // FP8: f32 [num_blocks][num_kv_heads]; else unused (may be empty)
  BufferView v_scales;
  BufferView tail;  // FP8: the whole f16 tail (all slots, all layers); else unused
};

// What every call of a step shares.
struct AttnStep {
  kv::KvLayout layout;  // the cache's layout (dtype, sizes)
  int64_t layer = 0;
  KvLayerViews cache;
  absl::Span<const AttnSequence> seqs;  // host copy of what seq_table holds
  BufferView seq_table;                 // EncodeSequenceTable(seqs), on the device
  BufferView k_new;                     // f32 [rows, num_kv_heads, head_dim], post-RoPE
  BufferView v_new;                     // f32 [rows, num_kv_heads, head_dim]
};

// How the attention kernels read q, K and V: storage buffers with K/V tiles staged in shared
// memory (GPUs), or uniform texel buffers read key by key with no staging (CPU devices:
// lavapipe fetches texels an order of magnitude faster than it loads storage buffers or shared
// memory; docs/performance.md). A texel launch whose views break the device's texel-buffer
// alignment falls back to storage reads.
enum class AttnReads : uint32_t { kDefault = 0, kStorage, kTexel };

// Tile sizes of the attention kernels (specialization constants; see
// shaders/include/flash_attn_core.glsl). 0 = chosen from the head size, GQA group, dtype and the
// device: GPUs get 8 lanes per row; CPU devices (lavapipe: 8-lane SIMD subgroups) one lane per
// row when a tile has enough rows to fill the SIMD width, else as many as fill it.
struct AttnTiles {
  uint32_t workgroup = 0;      // invocations, >= q_pos * group * lanes_per_row / rows_per_lane
  uint32_t q_pos = 0;          // query positions per tile (rows = q_pos * group)
  uint32_t keys = 0;           // keys per K/V tile (BC)
  uint32_t lanes_per_row = 0;  // invocations sharing a row (splitting head_dim)
  // Rows each invocation holds (texel reads only: it loads each key once for all of them).
  uint32_t rows_per_lane = 0;
  AttnReads reads = AttnReads::kDefault;  // kDefault: texel on CPU devices, storage elsewhere
};

struct DecodeOptions {
  // Keys per split-K partition: a multiple of the key tile. Fixed per deployment (not derived
  // from the batch) so a sequence's result does not depend on what it is batched with.
  uint32_t part_size = 256;
  AttnTiles tiles;
};

// Step 1: FP8 seal (a no-op for F32/F16 layouts).
absl::Status RecordKvSeal(CommandList& cl, const Kernels& kernels, const AttnStep& step);

// Step 3: commit seqs[s].num_new pending rows of each sequence (see the file comment).
absl::Status RecordKvCommit(CommandList& cl, const Kernels& kernels, const AttnStep& step);

// Causal attention for every pending position: q [rows, num_heads, head_dim] f32 ->
// out [rows, num_heads, head_dim] f32 (rows of other sequences' positions are not written).
absl::Status RecordFlashAttnPrefill(CommandList& cl, const Kernels& kernels, const AttnStep& step,
                                    int64_t num_heads, BufferView q, BufferView out,
                                    const AttnTiles& tiles = {});

// Bytes of `scratch` that RecordPagedAttnDecode needs for this batch.
uint64_t PagedAttnDecodeScratchBytes(const AttnStep& step, int64_t num_heads,
                                     const DecodeOptions& options = {});

// Split-K attention of the same contract as RecordFlashAttnPrefill, for few pending positions
// per sequence (decode, verification): partitions run in parallel into `scratch`, then a reduce
// writes `out`.
absl::Status RecordPagedAttnDecode(CommandList& cl, const Kernels& kernels, const AttnStep& step,
                                   int64_t num_heads, BufferView q, BufferView scratch,
                                   BufferView out, const DecodeOptions& options = {});

// The tiles the kernels use when `requested` leaves fields 0, or INVALID_ARGUMENT when the
// requested ones break a kernel's requirement or the device's limits.
// max_new: the most pending positions per sequence (decode: sizes the query tile).
absl::StatusOr<AttnTiles> ResolveAttnTiles(const Device& device, const kv::KvLayout& layout,
                                           int64_t num_heads, bool decode, int64_t max_new,
                                           const AttnTiles& requested = {});

// ids[r] = argmax of logits row r (lowest id on ties, NaN never chosen, 0 if all NaN).
// logits: f32 [rows, vocab]; ids: int32 [rows].
absl::Status RecordArgmax(CommandList& cl, const Kernels& kernels, BufferView logits, int64_t rows,
                          int64_t vocab, BufferView ids);

// The k (1..64) largest logits of each row, highest first, ties by lower id, NaN never chosen;
// slots beyond a row's non-NaN count get id -1 and -inf.
// logits: f32 [rows, vocab]; values: f32 [rows, k]; ids: int32 [rows, k].
absl::Status RecordTopK(CommandList& cl, const Kernels& kernels, BufferView logits, int64_t rows,
                        int64_t vocab, int64_t k, BufferView values, BufferView ids);

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_OPS_ATTENTION_H_
