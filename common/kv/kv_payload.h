// The canonical byte layout of a rectangle of one sequence's KV cache ("payload"): what a
// prefill node exports after computing a prompt and a decode node imports into its own pool, so
// that it continues exactly as if it had run the prefill itself. docs/kv-cache.md ("Wire
// payload") is the full description; the chunk framing around it (request id, checksums,
// sequence numbers) is common/kv/kv_transfer's business, which treats a payload as opaque bytes.
//
// A rectangle is layers [layer_begin, layer_end) x logical blocks [block_begin, block_end) of a
// sequence holding `num_tokens` committed positions. Logical block i holds positions
// i * block_size .. i * block_size + block_size - 1; a sequence of num_tokens positions has
// ceil(num_tokens / block_size) blocks, of which those below num_tokens / block_size are full.
// The payload is, in order:
//
//   for layer in [layer_begin, layer_end): for part in (K, V): for block in [block_begin,
//   block_end): one cell
//
// and a cell is, with H = num_kv_heads, B = block_size, D = head_dim, all little-endian:
//
//   F32 / F16 pool:       [H][B][D] in the pool dtype: the pool's own bytes of the block.
//                         Slots at or past num_tokens (in a partial last block) are zero.
//   FP8 pool, full block: [H][B][D] E4M3 bytes, then [H] f32 scales (the sealed block).
//   FP8 pool, partial:    [H][B][D] f16: the tail slot's values; slots past num_tokens zero.
//
// so a cell is a pure function of the block's committed tokens, whatever pool, block ids or
// tail slot the exporter used. Importing a payload writes those same bytes into the importer's
// blocks (and, for an FP8 partial block, its tail slot): the KV reads back bit-identically.
#ifndef DUET_COMMON_KV_KV_PAYLOAD_H_
#define DUET_COMMON_KV_KV_PAYLOAD_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/kv/paged_kv.h"

namespace duet::kv {

// Layers [layer_begin, layer_end) x logical blocks [block_begin, block_end) of one sequence.
struct KvRect {
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  int64_t block_begin = 0;
  int64_t block_end = 0;
};

// Logical blocks that num_tokens (>= 0) positions occupy: ceil(num_tokens / block_size).
int64_t NumBlocksFor(const KvLayout& layout, int64_t num_tokens);
// Every layer and every block of num_tokens positions.
KvRect FullRect(const KvLayout& layout, int64_t num_tokens);

// Bytes of the cell of logical block `block` (one layer, one part) of a sequence of num_tokens
// positions. REQUIRES: num_tokens >= 1 and 0 <= block < NumBlocksFor(layout, num_tokens).
int64_t KvCellBytes(const KvLayout& layout, int64_t num_tokens, int64_t block);
// Bytes of the payload of a rectangle. REQUIRES: ValidateRect(layout, num_tokens, rect) is OK.
int64_t KvPayloadBytes(const KvLayout& layout, int64_t num_tokens, int64_t layer_begin,
                       int64_t layer_end, int64_t block_begin, int64_t block_end);
inline int64_t KvPayloadBytes(const KvLayout& layout, int64_t num_tokens, const KvRect& rect) {
  return KvPayloadBytes(layout, num_tokens, rect.layer_begin, rect.layer_end, rect.block_begin,
                        rect.block_end);
}

// OK when num_tokens >= 1, 0 <= layer_begin < layer_end <= num_layers and 0 <= block_begin <
// block_end <= NumBlocksFor(num_tokens); else INVALID_ARGUMENT naming the bad bound and its
// limits. Empty rectangles are rejected (they carry nothing, so asking for one is a bug).
absl::Status ValidateRect(const KvLayout& layout, int64_t num_tokens, const KvRect& rect);

// ValidateRect, plus what a pool needs to read or write the rectangle for a sequence: the
// block table covers block_end blocks with ids in [0, num_blocks), and (FP8, when the rectangle
// holds a partial last block) tail_slot is in [0, num_tail_slots). INVALID_ARGUMENT naming the
// problem with the numbers otherwise.
absl::Status ValidateRectTarget(const KvLayout& layout, int64_t num_tokens, const KvRect& rect,
                                absl::Span<const int32_t> block_table, int32_t tail_slot);

// Where a cell's bytes live in a pool (the same for export and import).
enum class KvCellSource {
  kPool,      // F32/F16: data(layer, part) bytes of block_id, [H][B][D]
  kPoolFp8,   // FP8 full block: data(layer, part) bytes of block_id, then its H scales
  kTailSlot,  // FP8 partial block: tail slot's [H][B][D] f16 of (layer, part)
};

// One cell of a payload and where it lives.
struct KvCell {
  int64_t layer = 0;
  KvPart part = KvPart::kK;
  int64_t block = 0;     // logical block index in the sequence
  int32_t block_id = 0;  // the pool block (block_table[block])
  KvCellSource source = KvCellSource::kPool;
  // Committed positions in the block: block_size, or num_tokens % block_size when partial.
  int64_t num_valid_slots = 0;
  int64_t payload_offset = 0;  // bytes from the start of the payload
  int64_t bytes = 0;           // KvCellBytes
};

// The cells of a rectangle in payload order. REQUIRES: ValidateRectTarget is OK (tail_slot is
// not needed here: a kTailSlot cell lives in the caller's tail slot).
std::vector<KvCell> PayloadCells(const KvLayout& layout, int64_t num_tokens, const KvRect& rect,
                                 absl::Span<const int32_t> block_table);

// Byte ranges in the pool's storage (PagedKvCache's data(), scales() and tail(), which are the
// device layout too). Data: bytes of data(layer, part) holding the cell's [H][B][D] (kPool,
// kPoolFp8). Scales: bytes of scales(layer, part) holding its H scales (kPoolFp8 only). Tail:
// bytes of the whole tail holding [H][B][D] f16 of (tail_slot, layer, part) (kTailSlot only).
struct ByteRange {
  int64_t offset = 0;
  int64_t bytes = 0;
};
ByteRange CellDataRange(const KvLayout& layout, const KvCell& cell);
ByteRange CellScaleRange(const KvLayout& layout, const KvCell& cell);
ByteRange CellTailRange(const KvLayout& layout, const KvCell& cell, int32_t tail_slot);

// Zeroes, in the cell's payload bytes, every head's slots at or past num_valid_slots (memset
// per head; nothing for a full block). Exporters call it: pools may hold stale values there.
void ZeroUncommittedSlots(const KvLayout& layout, const KvCell& cell, uint8_t* cell_bytes);

// Checks an incoming cell before anything is written: slots past num_valid_slots are zero and
// (kPoolFp8) every scale is positive and finite. INVALID_ARGUMENT naming the layer, part, block
// and head otherwise.
absl::Status CheckCell(const KvLayout& layout, const KvCell& cell, const uint8_t* cell_bytes);

// Exports the rectangle of a sequence (block_table, tail_slot) of num_tokens positions from a
// CPU pool. REQUIRES: those positions are committed in the exported layers (the tail slot holds
// exactly positions [floor(num_tokens / block_size) * block_size, num_tokens) when the
// rectangle has an FP8 partial block). Errors: ValidateRectTarget's.
absl::StatusOr<std::vector<uint8_t>> ExportRect(const PagedKvCache& cache,
                                                absl::Span<const int32_t> block_table,
                                                int32_t tail_slot, int64_t num_tokens,
                                                const KvRect& rect);

// Writes a payload into the sequence's blocks (and, for an FP8 partial block, its tail slot).
// Errors (INVALID_ARGUMENT, nothing written): ValidateRectTarget's, a payload whose size is not
// KvPayloadBytes (both numbers named), or a cell failing CheckCell.
absl::Status ImportRect(PagedKvCache* cache, absl::Span<const int32_t> block_table,
                        int32_t tail_slot, int64_t num_tokens, const KvRect& rect,
                        absl::Span<const uint8_t> payload);

// CheckCell for every cell and the payload's size against the rectangle: what ImportRect and
// the engines' ImportKv check before writing. REQUIRES: ValidateRectTarget is OK.
absl::Status CheckPayload(const KvLayout& layout, int64_t num_tokens, const KvRect& rect,
                          absl::Span<const KvCell> cells, absl::Span<const uint8_t> payload);

}  // namespace duet::kv

#endif  // DUET_COMMON_KV_KV_PAYLOAD_H_
