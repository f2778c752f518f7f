#include "common/kv/kv_payload.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace duet::kv {
namespace {

// The payload is little-endian and cells are copied as raw host bytes.
static_assert(std::endian::native == std::endian::little,
              "KV payloads assume a little-endian host");

bool IsFp8(const KvLayout& layout) { return layout.dtype == CacheDtype::kFp8E4M3; }

// Bytes of one element of a cell's [H][B][D] tile: the pool dtype, or f16 for an FP8 tail.
int64_t CellElementBytes(const KvLayout& layout, KvCellSource source) {
  return source == KvCellSource::kTailSlot ? 2 : layout.element_bytes();
}

std::string CellName(const KvCell& cell) {
  return absl::StrCat("layer ", cell.layer, " ", cell.part == KvPart::kK ? "K" : "V", " block ",
                      cell.block);
}

}  // namespace

int64_t NumBlocksFor(const KvLayout& layout, int64_t num_tokens) {
  return (num_tokens + layout.block_size - 1) / layout.block_size;
}

KvRect FullRect(const KvLayout& layout, int64_t num_tokens) {
  return KvRect{0, layout.num_layers, 0, NumBlocksFor(layout, num_tokens)};
}

int64_t KvCellBytes(const KvLayout& layout, int64_t num_tokens, int64_t block) {
  const int64_t elements = layout.num_kv_heads * layout.tile_elements();
  if (!IsFp8(layout)) return elements * layout.element_bytes();
  const bool full = (block + 1) * layout.block_size <= num_tokens;
  return full ? elements + layout.num_kv_heads * 4 : elements * 2;
}

int64_t KvPayloadBytes(const KvLayout& layout, int64_t num_tokens, int64_t layer_begin,
                       int64_t layer_end, int64_t block_begin, int64_t block_end) {
  int64_t per_part = 0;
  // Only the last block can differ from the others; a sum keeps it obviously right.
  for (int64_t b = block_begin; b < block_end; ++b) per_part += KvCellBytes(layout, num_tokens, b);
  return (layer_end - layer_begin) * 2 * per_part;
}

absl::Status ValidateRect(const KvLayout& layout, int64_t num_tokens, const KvRect& rect) {
  if (num_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV rectangle: num_tokens ", num_tokens, " must be >= 1"));
  }
  if (rect.layer_begin < 0 || rect.layer_begin >= layout.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("KV rectangle: layer_begin ", rect.layer_begin,
                                                   " outside [0, ", layout.num_layers, ")"));
  }
  if (rect.layer_end <= rect.layer_begin || rect.layer_end > layout.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("KV rectangle: layer_end ", rect.layer_end,
                                                   " outside [", rect.layer_begin + 1, ", ",
                                                   layout.num_layers, "]"));
  }
  const int64_t blocks = NumBlocksFor(layout, num_tokens);
  if (rect.block_begin < 0 || rect.block_begin >= blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV rectangle: block_begin ", rect.block_begin, " outside [0, ", blocks, ") (",
                     num_tokens, " tokens in blocks of ", layout.block_size, ")"));
  }
  if (rect.block_end <= rect.block_begin || rect.block_end > blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV rectangle: block_end ", rect.block_end, " outside [", rect.block_begin + 1, ", ",
        blocks, "] (", num_tokens, " tokens in blocks of ", layout.block_size, ")"));
  }
  return absl::OkStatus();
}

absl::Status ValidateRectTarget(const KvLayout& layout, int64_t num_tokens, const KvRect& rect,
                                absl::Span<const int32_t> block_table, int32_t tail_slot) {
  if (absl::Status status = ValidateRect(layout, num_tokens, rect); !status.ok()) return status;
  if (static_cast<int64_t>(block_table.size()) < rect.block_end) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV rectangle: the block table has ", block_table.size(), " blocks; blocks [",
                     rect.block_begin, ", ", rect.block_end, ") need ", rect.block_end));
  }
  for (int64_t b = rect.block_begin; b < rect.block_end; ++b) {
    const int32_t id = block_table[static_cast<size_t>(b)];
    if (id < 0 || id >= layout.num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("KV rectangle: block table entry ", b, " = ",
                                                     id, " is outside the pool [0, ",
                                                     layout.num_blocks, ")"));
    }
  }
  const bool has_partial = rect.block_end * layout.block_size > num_tokens;
  if (IsFp8(layout) && has_partial && (tail_slot < 0 || tail_slot >= layout.num_tail_slots)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV rectangle: tail slot ", tail_slot, " is outside [0, ", layout.num_tail_slots,
        ") (block ", rect.block_end - 1, " is partial, its positions live in the tail slot)"));
  }
  return absl::OkStatus();
}

std::vector<KvCell> PayloadCells(const KvLayout& layout, int64_t num_tokens, const KvRect& rect,
                                 absl::Span<const int32_t> block_table) {
  std::vector<KvCell> cells;
  cells.reserve(static_cast<size_t>((rect.layer_end - rect.layer_begin) * 2 *
                                    (rect.block_end - rect.block_begin)));
  const int64_t bs = layout.block_size;
  int64_t offset = 0;
  for (int64_t layer = rect.layer_begin; layer < rect.layer_end; ++layer) {
    for (KvPart part : {KvPart::kK, KvPart::kV}) {
      for (int64_t b = rect.block_begin; b < rect.block_end; ++b) {
        KvCell cell;
        cell.layer = layer;
        cell.part = part;
        cell.block = b;
        cell.block_id = block_table[static_cast<size_t>(b)];
        const bool full = (b + 1) * bs <= num_tokens;
        cell.num_valid_slots = full ? bs : num_tokens - b * bs;
        cell.source = !IsFp8(layout) ? KvCellSource::kPool
                                     : (full ? KvCellSource::kPoolFp8 : KvCellSource::kTailSlot);
        cell.payload_offset = offset;
        cell.bytes = KvCellBytes(layout, num_tokens, b);
        offset += cell.bytes;
        cells.push_back(cell);
      }
    }
  }
  return cells;
}

ByteRange CellDataRange(const KvLayout& layout, const KvCell& cell) {
  return ByteRange{layout.PoolOffset(cell.block_id, 0, 0) * layout.element_bytes(),
                   layout.num_kv_heads * layout.tile_data_bytes()};
}

ByteRange CellScaleRange(const KvLayout& layout, const KvCell& cell) {
  return ByteRange{layout.ScaleOffset(cell.block_id, 0) * 4, layout.num_kv_heads * 4};
}

ByteRange CellTailRange(const KvLayout& layout, const KvCell& cell, int32_t tail_slot) {
  return ByteRange{layout.TailOffset(tail_slot, cell.layer, cell.part, 0, 0) * 2,
                   layout.num_kv_heads * layout.tile_elements() * 2};
}

void ZeroUncommittedSlots(const KvLayout& layout, const KvCell& cell, uint8_t* cell_bytes) {
  if (cell.num_valid_slots >= layout.block_size) return;
  const int64_t slot_bytes = layout.head_dim * CellElementBytes(layout, cell.source);
  const int64_t tile_bytes = layout.block_size * slot_bytes;
  for (int64_t head = 0; head < layout.num_kv_heads; ++head) {
    std::memset(cell_bytes + head * tile_bytes + cell.num_valid_slots * slot_bytes, 0,
                static_cast<size_t>(tile_bytes - cell.num_valid_slots * slot_bytes));
  }
}

absl::Status CheckCell(const KvLayout& layout, const KvCell& cell, const uint8_t* cell_bytes) {
  if (cell.num_valid_slots < layout.block_size) {
    const int64_t slot_bytes = layout.head_dim * CellElementBytes(layout, cell.source);
    const int64_t tile_bytes = layout.block_size * slot_bytes;
    for (int64_t head = 0; head < layout.num_kv_heads; ++head) {
      const uint8_t* p = cell_bytes + head * tile_bytes;
      for (int64_t i = cell.num_valid_slots * slot_bytes; i < tile_bytes; ++i) {
        if (p[i] != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "KV payload: ", CellName(cell), " head ", head, " has nonzero data in slot ",
              i / slot_bytes, ", past the block's ", cell.num_valid_slots, " committed positions"));
        }
      }
    }
  }
  if (cell.source == KvCellSource::kPoolFp8) {
    const uint8_t* scales = cell_bytes + layout.num_kv_heads * layout.tile_data_bytes();
    for (int64_t head = 0; head < layout.num_kv_heads; ++head) {
      float scale;
      std::memcpy(&scale, scales + head * 4, 4);
      if (!(scale > 0.0f) || !std::isfinite(scale)) {
        return absl::InvalidArgumentError(absl::StrCat("KV payload: ", CellName(cell), " head ",
                                                       head, " has scale ", scale,
                                                       " (must be positive and finite)"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPayload(const KvLayout& layout, int64_t num_tokens, const KvRect& rect,
                          absl::Span<const KvCell> cells, absl::Span<const uint8_t> payload) {
  const int64_t want = KvPayloadBytes(layout, num_tokens, rect);
  if (static_cast<int64_t>(payload.size()) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV payload: ", payload.size(), " bytes, but layers [", rect.layer_begin, ", ",
                     rect.layer_end, ") x blocks [", rect.block_begin, ", ", rect.block_end,
                     ") of ", num_tokens, " tokens take ", want));
  }
  for (const KvCell& cell : cells) {
    if (absl::Status status = CheckCell(layout, cell, payload.data() + cell.payload_offset);
        !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> ExportRect(const PagedKvCache& cache,
                                                absl::Span<const int32_t> block_table,
                                                int32_t tail_slot, int64_t num_tokens,
                                                const KvRect& rect) {
  const KvLayout& layout = cache.layout();
  if (absl::Status status = ValidateRectTarget(layout, num_tokens, rect, block_table, tail_slot);
      !status.ok()) {
    return status;
  }
  std::vector<uint8_t> payload(static_cast<size_t>(KvPayloadBytes(layout, num_tokens, rect)));
  const auto tail = absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(cache.tail().data()),
                                        cache.tail().size() * 2);
  for (const KvCell& cell : PayloadCells(layout, num_tokens, rect, block_table)) {
    uint8_t* dst = payload.data() + cell.payload_offset;
    if (cell.source == KvCellSource::kTailSlot) {
      const ByteRange r = CellTailRange(layout, cell, tail_slot);
      std::memcpy(dst, tail.data() + r.offset, static_cast<size_t>(r.bytes));
    } else {
      const ByteRange r = CellDataRange(layout, cell);
      std::memcpy(dst, cache.data(cell.layer, cell.part).data() + r.offset,
                  static_cast<size_t>(r.bytes));
      if (cell.source == KvCellSource::kPoolFp8) {
        const ByteRange s = CellScaleRange(layout, cell);
        std::memcpy(
            dst + r.bytes,
            reinterpret_cast<const uint8_t*>(cache.scales(cell.layer, cell.part).data()) + s.offset,
            static_cast<size_t>(s.bytes));
      }
    }
    ZeroUncommittedSlots(layout, cell, dst);
  }
  return payload;
}

absl::Status ImportRect(PagedKvCache* cache, absl::Span<const int32_t> block_table,
                        int32_t tail_slot, int64_t num_tokens, const KvRect& rect,
                        absl::Span<const uint8_t> payload) {
  const KvLayout& layout = cache->layout();
  if (absl::Status status = ValidateRectTarget(layout, num_tokens, rect, block_table, tail_slot);
      !status.ok()) {
    return status;
  }
  const std::vector<KvCell> cells = PayloadCells(layout, num_tokens, rect, block_table);
  if (absl::Status status = CheckPayload(layout, num_tokens, rect, cells, payload); !status.ok()) {
    return status;
  }
  const absl::Span<uint16_t> tail16 = cache->mutable_tail();
  uint8_t* tail = reinterpret_cast<uint8_t*>(tail16.data());
  for (const KvCell& cell : cells) {
    const uint8_t* src = payload.data() + cell.payload_offset;
    if (cell.source == KvCellSource::kTailSlot) {
      const ByteRange r = CellTailRange(layout, cell, tail_slot);
      std::memcpy(tail + r.offset, src, static_cast<size_t>(r.bytes));
      continue;
    }
    const ByteRange r = CellDataRange(layout, cell);
    std::memcpy(cache->mutable_data(cell.layer, cell.part).data() + r.offset, src,
                static_cast<size_t>(r.bytes));
    if (cell.source == KvCellSource::kPoolFp8) {
      const ByteRange s = CellScaleRange(layout, cell);
      std::memcpy(reinterpret_cast<uint8_t*>(cache->mutable_scales(cell.layer, cell.part).data()) +
                      s.offset,
                  src + r.bytes, static_cast<size_t>(s.bytes));
    }
  }
  return absl::OkStatus();
}

}  // namespace duet::kv
