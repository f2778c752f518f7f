// The KV transfer protocol's pure logic: chunk headers and their checksum, the decode-side
// receiver that decides whether a transfer is valid and complete, and the prefill-side planner
// that cuts the KV into chunks as it is produced. No gRPC, no device memory: payload bytes are
// opaque here (their layout is common/kv/kv_payload.h's business).
//
// A transfer moves the KV of one request's prompt from a prefill node to a decode node. The KV
// is a grid of cells: layers [0, num_layers) x logical blocks [0, num_blocks), where logical
// block i holds positions i*block_size .. (i+1)*block_size-1 and num_blocks =
// ceil(num_tokens / block_size). Each chunk carries one rectangle of cells
// [layer_begin, layer_end) x [block_begin, block_end), a sequence number (0, 1, 2, ... with no
// gaps), and a checksum over its header and payload. The chunk with `last` set ends the
// transfer and carries the first token the prefill node sampled. A transfer is valid only if
// every cell arrives exactly once, in chunks numbered in order, ending with `last`.
#ifndef DUET_COMMON_KV_KV_TRANSFER_H_
#define DUET_COMMON_KV_KV_TRANSFER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace duet::kv {

struct KvChunkHeader {
  std::string request_id;
  std::string reservation_id;  // the decode node's reservation the chunk is written into
  uint64_t seq_no = 0;         // 0 for the first chunk of a transfer, then +1 per chunk
  int32_t layer_begin = 0;     // the rectangle [layer_begin, layer_end) x [block_begin, block_end)
  int32_t layer_end = 0;
  int32_t block_begin = 0;
  int32_t block_end = 0;
  int64_t num_tokens = 0;  // tokens of the whole prompt (the same in every chunk)
  bool last = false;
  int32_t first_token = 0;  // meaningful only when `last`; senders set 0 otherwise
};

// ---- Checksum ------------------------------------------------------------------------------
//
// KvChunkChecksum = XXH3-64 (xxHash 0.8, XXH3_64bits_withSeed) with seed kKvChunkChecksumSeed
// over this byte string (format version 1; every integer little-endian whatever the host):
//
//   "DKVC"                          4 bytes, magic
//   u32 version                     = kKvChunkChecksumVersion (1)
//   u32 len, bytes                  request_id
//   u32 len, bytes                  reservation_id
//   u64 seq_no
//   i32 layer_begin, i32 layer_end, i32 block_begin, i32 block_end   (two's complement)
//   i64 num_tokens
//   u8  last                        0 or 1
//   i32 first_token                 (hashed even when !last, so senders must set it to 0)
//   u64 payload length
//   payload bytes
//
// Every header field is covered, so a flipped header bit is detected like a flipped payload bit.
// Changing anything above is a protocol change: bump the version and the golden test.
inline constexpr uint32_t kKvChunkChecksumVersion = 1;
inline constexpr uint64_t kKvChunkChecksumSeed = 0x3130564B54455544ULL;  // "DUETKV01" as LE u64

uint64_t KvChunkChecksum(const KvChunkHeader& header, absl::Span<const uint8_t> payload);

// The header part of the byte string above (everything before the payload bytes). Exposed so a
// test can pin the format; KvChunkChecksum streams it without concatenating the payload.
std::string KvChunkChecksumPrefix(const KvChunkHeader& header, uint64_t payload_size);

// ---- Shared vocabulary ---------------------------------------------------------------------

// Bytes of the payload of the rectangle [layer_begin, layer_end) x [block_begin, block_end).
// Decided by the payload format (e.g. FP8 data + scales per cell, a smaller last block).
using PayloadBytesFn = std::function<int64_t(int32_t layer_begin, int32_t layer_end,
                                             int32_t block_begin, int32_t block_end)>;

// The common payload shape: every (layer, block) cell is `full_cell_bytes`, except the cells of
// the last block (index num_blocks-1), which are `last_block_cell_bytes` (a partial block may be
// smaller). REQUIRES: num_blocks >= 1, both sizes >= 0. The returned function is additive
// over cells, which is what KvTransferPlanner needs.
PayloadBytesFn UniformCellPayloadBytes(int32_t num_blocks, int64_t full_cell_bytes,
                                       int64_t last_block_cell_bytes);

// ---- Decode side ---------------------------------------------------------------------------

// What the decode node expects of a transfer; built from its own reservation, never from the
// wire (the receiver allocates num_layers * num_blocks bits of bookkeeping).
struct TransferSpec {
  std::string request_id;
  std::string reservation_id;
  int32_t num_layers = 0;
  int32_t num_blocks = 0;  // ceil(num_tokens / block_size)
  int64_t num_tokens = 0;
  PayloadBytesFn expected_payload_bytes;
  // Blocks [0, num_present_blocks) the receiver holds already in every layer (a decode node's
  // prefix cache): they count as received, and a chunk that covers one overlaps. In
  // [0, num_blocks).
  int32_t num_present_blocks = 0;
};

// Decides, chunk by chunk, whether one transfer is valid; one receiver per transfer.
//
// The receiver does not store payloads. Accept() returning OK is the caller's permission to
// write that chunk's payload into its reserved blocks; the caller must write nothing for a chunk
// whose Accept failed, and must decode only once complete() is true.
//
// Once any Accept() fails the receiver is poisoned: every later Accept() returns that first
// error and complete() is false from then on, even if a valid `last` had already arrived (a
// chunk after `last` means the sender is broken; the node acts on complete() right after the
// Accept() that made it true).
// An invalid spec (num_layers, num_blocks or num_tokens < 1, num_blocks > num_tokens, no
// expected_payload_bytes) poisons the receiver from the start with INVALID_ARGUMENT.
//
// Thread safety: not thread-safe; a transfer's stream handler owns its receiver.
class KvTransferReceiver {
 public:
  explicit KvTransferReceiver(TransferSpec spec);

  // Checks, in this order, and returns the first problem:
  //   DATA_LOSS         checksum != KvChunkChecksum(header, payload);
  //   INVALID_ARGUMENT  request or reservation id not this transfer's; a layer or block range
  //                     that is empty or outside [0, num_layers) / [0, num_blocks); num_tokens
  //                     different from the spec's; payload size != expected_payload_bytes(rect);
  //   FAILED_PRECONDITION  a chunk after `last`; seq_no not the next one expected (a duplicate
  //                     or a gap); a rectangle overlapping cells already received; `last` while
  //                     cells would still be missing (the message says how many).
  // On OK the chunk's cells count as received; on error nothing changes but the poisoning.
  absl::Status Accept(const KvChunkHeader& header, absl::Span<const uint8_t> payload,
                      uint64_t checksum);

  // True once a valid `last` arrived with every (layer, block) cell covered exactly once, and no
  // Accept() has failed.
  bool complete() const { return complete_ && error_.ok(); }
  // OK, or the first error Accept() returned.
  const absl::Status& status() const { return error_; }

  int64_t num_cells() const { return num_cells_; }  // num_layers * num_blocks
  int64_t cells_received() const { return cells_received_; }
  int64_t bytes_received() const { return bytes_received_; }  // payload bytes of accepted chunks
  uint64_t chunks_received() const { return chunks_received_; }
  // The first token of the `last` chunk; nullopt unless complete().
  std::optional<int32_t> first_token() const { return complete() ? first_token_ : std::nullopt; }

 private:
  absl::Status Check(const KvChunkHeader& header, absl::Span<const uint8_t> payload,
                     uint64_t checksum) const;
  int64_t CellIndex(int32_t layer, int32_t block) const {
    return static_cast<int64_t>(layer) * spec_.num_blocks + block;
  }

  TransferSpec spec_;
  int64_t num_cells_ = 0;
  std::vector<bool> received_;  // [num_layers][num_blocks], row-major
  int64_t cells_received_ = 0;
  int64_t bytes_received_ = 0;
  uint64_t chunks_received_ = 0;  // also the next expected seq_no
  bool last_seen_ = false;
  bool complete_ = false;
  std::optional<int32_t> first_token_;
  absl::Status error_;
};

// ---- Prefill side --------------------------------------------------------------------------

// One chunk to send: its sequence number, rectangle, payload size and whether it is the last.
struct ChunkRect {
  uint64_t seq_no = 0;
  int32_t layer_begin = 0;
  int32_t layer_end = 0;
  int32_t block_begin = 0;
  int32_t block_end = 0;
  int64_t payload_bytes = 0;
  bool last = false;

  friend bool operator==(const ChunkRect&, const ChunkRect&) = default;
};

// The header for `rect` of the given transfer. `first_token` is used only when rect.last
// (otherwise the header carries 0, as the checksum format requires).
KvChunkHeader MakeChunkHeader(const std::string& request_id, const std::string& reservation_id,
                              int64_t num_tokens, const ChunkRect& rect, int32_t first_token);

struct PlannerOptions {
  int32_t num_layers = 0;
  int64_t num_tokens = 0;
  int32_t block_size = 0;
  int64_t max_chunk_payload_bytes = 0;  // budget per chunk's payload
  // Blocks [0, skip_blocks) the receiver has already (TransferSpec::num_present_blocks): never
  // planned. In [0, num_blocks).
  int32_t skip_blocks = 0;
  // Payload bytes of a rectangle. REQUIRES: never decreases when a rectangle grows (true of any
  // per-cell sum, e.g. UniformCellPayloadBytes).
  PayloadBytesFn payload_bytes;
};

// Cuts one transfer into chunks as the KV becomes ready (prefill side; one planner per
// transfer). Readiness is reported as "for every layer < layer_end, every block < block_end is
// ready"; successive reports may be given in any order and the planner sends each cell once.
//   - Whole-prompt prefill: OnLayersReady(l) after each layer (or group of layers).
//   - Chunked prefill: after prefill chunk k finishes layer l, OnBlocksReady(l + 1, b_k), where
//     b_k counts the blocks that chunk k completed (its partial trailing block is not ready until
//     a later chunk fills it, or the prompt ends: then b_k = num_blocks).
// Pending cells are grouped by runs of layers that miss the same blocks, then split: a group
// whose single layer fits the budget is sent as whole-layer rectangles packing as many layers
// as fit; otherwise each layer is split by block ranges that fit. Sequence numbers are assigned
// in the order of the returned rectangles, across calls; the rectangle that covers the last
// missing cell is marked `last`. The caller sends the rectangles in the order returned; it may
// hold the `last` chunk until it has sampled the first token.
//
// Thread safety: not thread-safe.
class KvTransferPlanner {
 public:
  // INVALID_ARGUMENT for a non-positive count or budget, no payload_bytes function, or a single
  // cell whose payload exceeds the budget (it could never be sent).
  static absl::StatusOr<KvTransferPlanner> Create(PlannerOptions options);

  // Same as OnBlocksReady(layer_end, num_blocks()).
  absl::StatusOr<std::vector<ChunkRect>> OnLayersReady(int32_t layer_end);
  // The rectangles covering cells that became ready and were not planned yet (possibly none;
  // always none once done()). INVALID_ARGUMENT if layer_end or block_end is outside
  // [0, num_layers] / [0, num_blocks], with nothing planned.
  absl::StatusOr<std::vector<ChunkRect>> OnBlocksReady(int32_t layer_end, int32_t block_end);

  int32_t num_layers() const { return options_.num_layers; }
  int32_t num_blocks() const { return num_blocks_; }
  bool done() const { return done_; }  // the `last` chunk has been planned
  uint64_t next_seq_no() const { return next_seq_no_; }

 private:
  KvTransferPlanner(PlannerOptions options, int32_t num_blocks);
  void Split(int32_t layer_begin, int32_t layer_end, int32_t block_begin, int32_t block_end,
             std::vector<ChunkRect>* out);
  void Emit(int32_t layer_begin, int32_t layer_end, int32_t block_begin, int32_t block_end,
            std::vector<ChunkRect>* out);

  PlannerOptions options_;
  int32_t num_blocks_ = 0;
  std::vector<int32_t> sent_blocks_;  // [num_layers]: blocks [0, sent_blocks_[l]) are planned
  int64_t cells_planned_ = 0;
  uint64_t next_seq_no_ = 0;
  bool done_ = false;
};

}  // namespace duet::kv

#endif  // DUET_COMMON_KV_KV_TRANSFER_H_
