// VulkanEngine: ExportKv and ImportKv, copies between the device KV buffers and the host bytes
// of a payload (common/kv/kv_payload.h lays them out).
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/engine/vulkan_engine.h"

namespace duet {
namespace {

uint64_t U64(int64_t v) { return static_cast<uint64_t>(v); }

}  // namespace

std::vector<VulkanEngine::KvCopy> VulkanEngine::KvCopies(absl::Span<const kv::KvCell> cells,
                                                         int32_t tail_slot) const {
  std::vector<KvCopy> copies;
  // Appends one copy, merged into the previous one when both sides continue it (consecutive
  // F32/F16 blocks with consecutive ids are one copy).
  auto add = [&](const vk::Buffer* buffer, const kv::ByteRange& range, int64_t payload_offset) {
    if (!copies.empty()) {
      KvCopy& last = copies.back();
      if (last.buffer == buffer && last.buffer_offset + last.bytes == U64(range.offset) &&
          last.payload_offset + last.bytes == U64(payload_offset)) {
        last.bytes += U64(range.bytes);
        return;
      }
    }
    copies.push_back(KvCopy{buffer, U64(range.offset), U64(payload_offset), U64(range.bytes)});
  };
  for (const kv::KvCell& cell : cells) {
    const size_t layer = static_cast<size_t>(cell.layer);
    const bool k = cell.part == kv::KvPart::kK;
    switch (cell.source) {
      case kv::KvCellSource::kTailSlot:
        add(&kv_.tail, kv::CellTailRange(layout_, cell, tail_slot), cell.payload_offset);
        break;
      case kv::KvCellSource::kPool:
      case kv::KvCellSource::kPoolFp8: {
        const kv::ByteRange data = kv::CellDataRange(layout_, cell);
        add(k ? &kv_.k_data[layer] : &kv_.v_data[layer], data, cell.payload_offset);
        if (cell.source == kv::KvCellSource::kPoolFp8) {
          add(k ? &kv_.k_scales[layer] : &kv_.v_scales[layer], kv::CellScaleRange(layout_, cell),
              cell.payload_offset + data.bytes);
        }
        break;
      }
    }
  }
  return copies;
}

absl::Status VulkanEngine::TransferKv(absl::Span<const KvCopy> copies, const uint8_t* from_host,
                                      uint8_t* to_host, uint64_t payload_bytes) {
  const bool import = from_host != nullptr;
  const bool mapped = std::all_of(copies.begin(), copies.end(),
                                  [](const KvCopy& c) { return c.buffer->host_visible(); });
  if (mapped && !kv_copies_via_staging_) {
    // Unified memory: the KV buffers are host-visible and coherent, and no submission that
    // writes these bytes is in flight (only finished layers are exported during a Prefill).
    for (const KvCopy& c : copies) {
      uint8_t* device = static_cast<uint8_t*>(c.buffer->mapped()) + c.buffer_offset;
      if (import) {
        std::memcpy(device, from_host + c.payload_offset, c.bytes);
      } else {
        std::memcpy(to_host + c.payload_offset, device, c.bytes);
      }
    }
    return absl::OkStatus();
  }

  vk::Buffer& staging = import ? import_staging_ : export_staging_;
  if (staging.size() < payload_bytes) {
    // Grow geometrically: a prefill node exports many similar rectangles.
    DUET_ASSIGN_OR_RETURN(staging,
                          NewBuffer(std::max<uint64_t>(payload_bytes, 2 * staging.size()),
                                    import ? vk::MemoryKind::kUpload : vk::MemoryKind::kReadback));
  }
  if (xfer_cl_ == nullptr) ResetList(&xfer_cl_, /*profiling=*/false);
  if (xfer_cl_ == nullptr) return absl::InternalError("VulkanEngine: cannot create a command list");
  if (import) std::memcpy(staging.mapped(), from_host, payload_bytes);
  for (const KvCopy& c : copies) {
    const vk::BufferView device = c.buffer->view(c.buffer_offset, c.bytes);
    const vk::BufferView host = staging.view(c.payload_offset, c.bytes);
    absl::Status status = import ? xfer_cl_->Copy(host, device) : xfer_cl_->Copy(device, host);
    if (!status.ok()) {
      ResetList(&xfer_cl_, /*profiling=*/false);
      return status;
    }
  }
  DUET_RETURN_IF_ERROR(xfer_cl_->Submit());
  if (!import) std::memcpy(to_host, staging.mapped(), payload_bytes);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> VulkanEngine::ExportKv(const SequenceRef& seq,
                                                            int64_t num_tokens,
                                                            const kv::KvRect& rect) {
  DUET_RETURN_IF_ERROR(gate_.CheckExport(num_tokens, rect));
  DUET_RETURN_IF_ERROR(
      kv::ValidateRectTarget(layout_, num_tokens, rect, seq.block_table, seq.tail_slot));
  // Queued commits may write these cells (none is queued while an observed Prefill runs: it
  // flushed them, and Commit waits for it).
  DUET_RETURN_IF_ERROR(FlushQueuedCommits());
  const std::vector<kv::KvCell> cells =
      kv::PayloadCells(layout_, num_tokens, rect, seq.block_table);
  std::vector<uint8_t> payload(static_cast<size_t>(kv::KvPayloadBytes(layout_, num_tokens, rect)));
  DUET_RETURN_IF_ERROR(
      TransferKv(KvCopies(cells, seq.tail_slot), nullptr, payload.data(), payload.size()));
  // Pools may hold stale values past the committed positions; the wire has zeros there.
  for (const kv::KvCell& cell : cells) {
    kv::ZeroUncommittedSlots(layout_, cell, payload.data() + cell.payload_offset);
  }
  return payload;
}

absl::Status VulkanEngine::ImportKv(const SequenceRef& seq, int64_t num_tokens,
                                    const kv::KvRect& rect, absl::Span<const uint8_t> payload) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("ImportKv"));
  DUET_RETURN_IF_ERROR(
      kv::ValidateRectTarget(layout_, num_tokens, rect, seq.block_table, seq.tail_slot));
  const std::vector<kv::KvCell> cells =
      kv::PayloadCells(layout_, num_tokens, rect, seq.block_table);
  DUET_RETURN_IF_ERROR(kv::CheckPayload(layout_, num_tokens, rect, cells, payload));
  // A queued commit into these cells (blocks freed and reused) must not land after the import.
  DUET_RETURN_IF_ERROR(FlushQueuedCommits());
  DUET_RETURN_IF_ERROR(
      TransferKv(KvCopies(cells, seq.tail_slot), payload.data(), nullptr, payload.size()));
  verifies_.ForgetBlocks(
      seq.block_table.subspan(static_cast<size_t>(rect.block_begin),
                              static_cast<size_t>(rect.block_end - rect.block_begin)));
  return absl::OkStatus();
}

}  // namespace duet
