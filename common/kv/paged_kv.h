// The paged KV cache: its layout (byte math shared by the CPU store, the Vulkan kernels and the
// calculators) and a CPU store with the reference attention over it. docs/kv-cache.md is the
// full design; in short:
//
//   - A pool of `num_blocks` blocks; a block holds `block_size` positions of K and V of one
//     sequence for every layer and KV head. Position p of a sequence lives in block
//     block_table[p / block_size], slot p % block_size.
//   - Per layer, separately for K and V: data [num_blocks][num_kv_heads][block_size][head_dim]
//     in the cache dtype, so one (block, head) is a contiguous block_size x head_dim tile.
//   - FP8 (E4M3, common/model/fp8.h): one f32 scale per (layer, K|V, block, KV head), stored
//     [num_blocks][num_kv_heads] per layer and part; scale = amax / 448 of that tile. A block is
//     quantized ("sealed") only once all its positions exist, so its bytes depend on its own
//     tokens alone. A sequence's partial last block lives in an f16 tail slot:
//     [num_tail_slots][num_layers][K|V][num_kv_heads][block_size][head_dim].
//
// A step of the model appends n "pending" positions (K/V computed this step, not yet stored)
// to each sequence that already has `num_cached` committed positions. Per layer:
//   1. SealCompleted: FP8 only. Quantizes every block that the pending positions complete, from
//      the tail (committed positions) and the pending rows, into its pool block. Harmless for
//      speculative positions: nothing reads a block as sealed until it is committed.
//   2. Attention: query i (position p = num_cached + i) attends to keys 0..p. With FP8, keys in
//      blocks before p's block read the sealed FP8 block; keys in p's own block read f16 (the
//      tail for committed keys, the pending rows rounded to f16 otherwise). With F32/F16 keys
//      read the pool (committed) or the pending rows rounded to the dtype. So what a query sees
//      never depends on how positions were split into steps.
//   3. Commit(accepted): stores the first `accepted` pending positions: F32/F16 into their
//      blocks; FP8 only those of the trailing partial block into the tail (completed blocks were
//      sealed in step 1). Rolling back speculative positions is committing fewer of them.
#ifndef DUET_COMMON_KV_PAGED_KV_H_
#define DUET_COMMON_KV_PAGED_KV_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace duet::kv {

// The storage type of the cached K and V values.
enum class CacheDtype { kF32, kF16, kFp8E4M3 };

std::string_view CacheDtypeName(CacheDtype dtype);  // "f32", "f16", "fp8"
// Parses CacheDtypeName's spelling (also "fp8_e4m3", "e4m3"). INVALID_ARGUMENT otherwise.
absl::StatusOr<CacheDtype> ParseCacheDtype(std::string_view name);

inline constexpr int64_t kDefaultBlockSize = 16;
// FP8 blocks (data + scale) must stay within this fraction of F16's bytes (wire and memory).
inline constexpr double kMaxFp8BytesRatio = 0.53;

// K or V part of a layer.
enum class KvPart { kK = 0, kV = 1 };

// Bytes of one (block, KV head) tile of K or V (data + scale) in FP8 over the same in F16:
// (block_size * head_dim + 4) / (2 * block_size * head_dim).
double Fp8BytesRatio(int64_t block_size, int64_t head_dim);

// Where everything lives. Byte sizes are int64_t bytes; element offsets count elements of the
// stored type.
struct KvLayout {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = kDefaultBlockSize;
  CacheDtype dtype = CacheDtype::kF16;
  int64_t num_blocks = 0;
  // FP8 only: how many sequences may hold a partial block at once (0 for F32/F16).
  int64_t num_tail_slots = 0;

  // INVALID_ARGUMENT when a size is not positive (num_blocks may be 0 only for byte math),
  // head_dim is not a multiple of 4, block_size is not a power of two, a tail is requested for
  // F32/F16, or FP8's bytes exceed kMaxFp8BytesRatio of F16's for this block_size x head_dim.
  absl::Status Validate() const;

  int64_t element_bytes() const;  // 4, 2 or 1
  int64_t tile_elements() const { return block_size * head_dim; }
  // One (block, KV head) tile of K or V: data bytes, and scale bytes (4 for FP8, else 0).
  int64_t tile_data_bytes() const { return tile_elements() * element_bytes(); }
  int64_t tile_scale_bytes() const { return dtype == CacheDtype::kFp8E4M3 ? 4 : 0; }
  // One layer's K (or V) data [num_blocks][num_kv_heads][block_size][head_dim] and scales
  // [num_blocks][num_kv_heads] (0 bytes unless FP8).
  int64_t layer_data_bytes() const { return num_blocks * num_kv_heads * tile_data_bytes(); }
  int64_t layer_scale_bytes() const { return num_blocks * num_kv_heads * tile_scale_bytes(); }
  // What one block costs across all layers, K and V, data and scales.
  int64_t block_bytes() const;
  int64_t pool_bytes() const { return num_blocks * block_bytes(); }
  // The f16 tail: one slot holds a block's worth of K and V of every layer and KV head.
  int64_t tail_slot_elements() const { return num_layers * 2 * num_kv_heads * tile_elements(); }
  int64_t tail_slot_bytes() const { return 2 * tail_slot_elements(); }
  int64_t tail_bytes() const { return num_tail_slots * tail_slot_bytes(); }
  int64_t total_bytes() const { return pool_bytes() + tail_bytes(); }
  int64_t token_capacity() const { return num_blocks * block_size; }

  // Element offsets. Pool: of (block, head, slot) in one layer's K or V data. Scales: of
  // (block, head) in one layer's K or V scales. Tail: of (tail slot, layer, part, head, slot).
  int64_t PoolOffset(int64_t block, int64_t head, int64_t slot) const {
    return ((block * num_kv_heads + head) * block_size + slot) * head_dim;
  }
  int64_t ScaleOffset(int64_t block, int64_t head) const { return block * num_kv_heads + head; }
  int64_t TailOffset(int64_t tail_slot, int64_t layer, KvPart part, int64_t head,
                     int64_t slot) const {
    return ((((tail_slot * num_layers + layer) * 2 + static_cast<int64_t>(part)) * num_kv_heads +
             head) *
                block_size +
            slot) *
           head_dim;
  }
};

// How many blocks of `geometry` (its dtype, sizes; num_blocks ignored) fit in `pool_bytes`.
int64_t BlocksThatFit(const KvLayout& geometry, int64_t pool_bytes);

// One sequence as a step sees it.
struct SequenceView {
  // Block ids in position order. Must cover every position the call touches: committed ones
  // and the step's pending ones.
  absl::Span<const int32_t> block_table;
  int64_t num_cached = 0;  // committed positions; the step's pending positions start here
  int32_t tail_slot = -1;  // FP8: this sequence's tail slot; ignored for F32/F16
};

// The CPU paged KV store: the CPU engine's cache and the oracle for the Vulkan kernels. Its
// byte layout is exactly the device layout (data(), scales(), tail() can be uploaded as is).
// Not thread-safe. Pending K/V rows are [n, num_kv_heads, head_dim] f32, post-RoPE.
class PagedKvCache {
 public:
  // INVALID_ARGUMENT from layout.Validate() or when num_blocks is 0.
  static absl::StatusOr<PagedKvCache> Create(const KvLayout& layout);

  const KvLayout& layout() const { return layout_; }

  // Step 1 (FP8 only; OK and nothing done for F32/F16): seals every block b with
  // floor(num_cached / block_size) <= b and (b + 1) * block_size <= num_cached + n.
  // Deterministic and idempotent. INVALID_ARGUMENT for a bad layer, tail slot, block table or n.
  absl::Status SealCompleted(int64_t layer, const SequenceView& seq, const float* k_new,
                             const float* v_new, int64_t n);

  // Step 2: out [n, num_heads, head_dim] = attention of q [n, num_heads, head_dim] (query i at
  // position num_cached + i) over keys 0..num_cached + i, as the file comment describes:
  // grouped-query (query head h uses KV head h / (num_heads / num_kv_heads)), scale
  // 1/sqrt(head_dim), computed in double by cpu_ref::Attention.
  // REQUIRES (FP8): SealCompleted ran for these pending rows.
  absl::Status Attention(int64_t layer, const SequenceView& seq, const float* q, int64_t num_heads,
                         const float* k_new, const float* v_new, int64_t n, float* out) const;

  // Step 3: commits the first `accepted` pending rows (see the file comment).
  // REQUIRES (FP8): SealCompleted ran for at least these pending rows.
  absl::Status Commit(int64_t layer, const SequenceView& seq, const float* k_new,
                      const float* v_new, int64_t accepted);

  // What a query at `query_pos` reads for key `key_pos` (<= query_pos): k and v
  // [num_kv_heads, head_dim], dequantized. Keys >= seq.num_cached come from the pending rows.
  void KeyValueFor(int64_t layer, const SequenceView& seq, const float* k_new, const float* v_new,
                   int64_t query_pos, int64_t key_pos, float* k, float* v) const;

  // Storage in the device layout. data: one layer's K or V (layout().layer_data_bytes());
  // scales: [num_blocks][num_kv_heads] (empty unless FP8); tail: all tail slots, f16 bits.
  absl::Span<const uint8_t> data(int64_t layer, KvPart part) const;
  absl::Span<const float> scales(int64_t layer, KvPart part) const;
  absl::Span<const uint16_t> tail() const { return tail_; }
  // The same storage, writable: for importing a KV payload (common/kv/kv_payload.h), which
  // writes whole committed blocks and tails. Callers keep the cache's invariants (docs).
  absl::Span<uint8_t> mutable_data(int64_t layer, KvPart part) {
    return absl::MakeSpan(Data(layer, part));
  }
  absl::Span<float> mutable_scales(int64_t layer, KvPart part) {
    return absl::MakeSpan(Scales(layer, part));
  }
  absl::Span<uint16_t> mutable_tail() { return absl::MakeSpan(tail_); }

 private:
  explicit PagedKvCache(const KvLayout& layout);

  // Checks the arguments every step function shares.
  absl::Status CheckStep(int64_t layer, const SequenceView& seq, int64_t n) const;
  std::vector<uint8_t>& Data(int64_t layer, KvPart part) {
    return data_[static_cast<size_t>(layer * 2 + static_cast<int64_t>(part))];
  }
  std::vector<float>& Scales(int64_t layer, KvPart part) {
    return scales_[static_cast<size_t>(layer * 2 + static_cast<int64_t>(part))];
  }
  // One KV head's vector of `part` at key_pos as query_pos sees it -> dst [head_dim].
  void ReadHead(int64_t layer, KvPart part, const SequenceView& seq, const float* pending,
                int64_t query_pos, int64_t key_pos, int64_t head, float* dst) const;

  KvLayout layout_;
  std::vector<std::vector<uint8_t>> data_;  // [layer * 2 + part] -> layer_data_bytes()
  std::vector<std::vector<float>> scales_;  // [layer * 2 + part] -> [num_blocks][num_kv_heads]
  std::vector<uint16_t> tail_;              // f16 bits, layout().tail_slot_elements() per slot
};

}  // namespace duet::kv

#endif  // DUET_COMMON_KV_PAGED_KV_H_
