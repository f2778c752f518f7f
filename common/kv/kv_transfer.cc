#include "common/kv/kv_transfer.h"

#include <xxhash.h>

#include <cstdlib>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace duet::kv {
namespace {

void PutU32(uint32_t v, std::string* out) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void PutU64(uint64_t v, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void PutBytes(const std::string& s, std::string* out) {
  PutU32(static_cast<uint32_t>(s.size()), out);
  out->append(s);
}

struct XxhStateDeleter {
  void operator()(XXH3_state_t* state) const { XXH3_freeState(state); }
};

std::string RectString(int32_t layer_begin, int32_t layer_end, int32_t block_begin,
                       int32_t block_end) {
  return absl::StrCat("layers [", layer_begin, ", ", layer_end, ") x blocks [", block_begin, ", ",
                      block_end, ")");
}

}  // namespace

std::string KvChunkChecksumPrefix(const KvChunkHeader& header, uint64_t payload_size) {
  std::string out;
  out.reserve(64 + header.request_id.size() + header.reservation_id.size());
  out.append("DKVC");
  PutU32(kKvChunkChecksumVersion, &out);
  PutBytes(header.request_id, &out);
  PutBytes(header.reservation_id, &out);
  PutU64(header.seq_no, &out);
  PutU32(static_cast<uint32_t>(header.layer_begin), &out);
  PutU32(static_cast<uint32_t>(header.layer_end), &out);
  PutU32(static_cast<uint32_t>(header.block_begin), &out);
  PutU32(static_cast<uint32_t>(header.block_end), &out);
  PutU64(static_cast<uint64_t>(header.num_tokens), &out);
  out.push_back(header.last ? '\1' : '\0');
  PutU32(static_cast<uint32_t>(header.first_token), &out);
  PutU64(payload_size, &out);
  return out;
}

uint64_t KvChunkChecksum(const KvChunkHeader& header, absl::Span<const uint8_t> payload) {
  const std::string prefix = KvChunkChecksumPrefix(header, payload.size());
  std::unique_ptr<XXH3_state_t, XxhStateDeleter> state(XXH3_createState());
  if (state == nullptr) std::abort();  // out of memory
  XXH3_64bits_reset_withSeed(state.get(), kKvChunkChecksumSeed);
  XXH3_64bits_update(state.get(), prefix.data(), prefix.size());
  if (!payload.empty()) XXH3_64bits_update(state.get(), payload.data(), payload.size());
  return XXH3_64bits_digest(state.get());
}

PayloadBytesFn UniformCellPayloadBytes(int32_t num_blocks, int64_t full_cell_bytes,
                                       int64_t last_block_cell_bytes) {
  return [=](int32_t layer_begin, int32_t layer_end, int32_t block_begin, int32_t block_end) {
    const int64_t layers = layer_end - layer_begin;
    int64_t per_layer = static_cast<int64_t>(block_end - block_begin) * full_cell_bytes;
    if (block_begin < num_blocks && block_end == num_blocks) {
      per_layer += last_block_cell_bytes - full_cell_bytes;
    }
    return layers * per_layer;
  };
}

// ---- KvTransferReceiver --------------------------------------------------------------------

KvTransferReceiver::KvTransferReceiver(TransferSpec spec) : spec_(std::move(spec)) {
  if (spec_.num_layers < 1 || spec_.num_blocks < 1 || spec_.num_tokens < 1 ||
      spec_.num_blocks > spec_.num_tokens || !spec_.expected_payload_bytes ||
      spec_.num_present_blocks < 0 || spec_.num_present_blocks >= spec_.num_blocks) {
    error_ = absl::InvalidArgumentError(absl::StrCat(
        "invalid transfer spec for request ", spec_.request_id, ": num_layers=", spec_.num_layers,
        " num_blocks=", spec_.num_blocks, " num_tokens=", spec_.num_tokens,
        " num_present_blocks=", spec_.num_present_blocks,
        spec_.expected_payload_bytes ? "" : ", no expected_payload_bytes function"));
    return;
  }
  num_cells_ = static_cast<int64_t>(spec_.num_layers) * spec_.num_blocks;
  received_.assign(static_cast<size_t>(num_cells_), false);
  // Blocks the receiver holds already count as received: a chunk covering one overlaps.
  for (int32_t l = 0; l < spec_.num_layers; ++l) {
    for (int32_t b = 0; b < spec_.num_present_blocks; ++b) {
      received_[static_cast<size_t>(CellIndex(l, b))] = true;
      ++cells_received_;
    }
  }
}

absl::Status KvTransferReceiver::Check(const KvChunkHeader& h, absl::Span<const uint8_t> payload,
                                       uint64_t checksum) const {
  const uint64_t actual = KvChunkChecksum(h, payload);
  if (actual != checksum) {
    return absl::DataLossError(absl::StrCat("KV chunk seq ", h.seq_no, " of request ",
                                            spec_.request_id, ": checksum mismatch (sent ",
                                            checksum, ", computed ", actual, ")"));
  }
  const std::string where =
      absl::StrCat("KV chunk seq ", h.seq_no, " of request ", spec_.request_id);
  if (h.request_id != spec_.request_id) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": carries request id '", h.request_id, "'"));
  }
  if (h.reservation_id != spec_.reservation_id) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": reservation id '", h.reservation_id,
                                                   "' is not '", spec_.reservation_id, "'"));
  }
  const std::string rect = RectString(h.layer_begin, h.layer_end, h.block_begin, h.block_end);
  if (h.layer_begin < 0 || h.layer_begin >= h.layer_end || h.layer_end > spec_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", rect,
                                                   " has an empty or out-of-range layer range "
                                                   "(num_layers ",
                                                   spec_.num_layers, ")"));
  }
  if (h.block_begin < 0 || h.block_begin >= h.block_end || h.block_end > spec_.num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", rect,
                                                   " has an empty or out-of-range block range "
                                                   "(num_blocks ",
                                                   spec_.num_blocks, ")"));
  }
  if (h.num_tokens != spec_.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": num_tokens ", h.num_tokens,
                                                   " but the transfer has ", spec_.num_tokens));
  }
  const int64_t expected =
      spec_.expected_payload_bytes(h.layer_begin, h.layer_end, h.block_begin, h.block_end);
  if (expected < 0 || static_cast<uint64_t>(expected) != payload.size()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": payload of ", payload.size(),
                                                   " bytes for ", rect, ", expected ", expected));
  }
  if (last_seen_) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": arrived after the last chunk (seq ", chunks_received_ - 1, ")"));
  }
  if (h.seq_no != chunks_received_) {
    if (h.seq_no < chunks_received_) {
      return absl::FailedPreconditionError(absl::StrCat(
          where, ": duplicate or replayed sequence number; next expected ", chunks_received_));
    }
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": sequence gap; expected seq ", chunks_received_, ", ",
                     h.seq_no - chunks_received_, " chunk(s) missing"));
  }
  int64_t overlapping = 0;
  int32_t first_layer = -1;
  int32_t first_block = -1;
  for (int32_t l = h.layer_begin; l < h.layer_end; ++l) {
    for (int32_t b = h.block_begin; b < h.block_end; ++b) {
      if (!received_[static_cast<size_t>(CellIndex(l, b))]) continue;
      if (overlapping++ == 0) {
        first_layer = l;
        first_block = b;
      }
    }
  }
  if (overlapping > 0) {
    return absl::FailedPreconditionError(absl::StrCat(where, ": ", rect, " overlaps ", overlapping,
                                                      " cell(s) already received (first: layer ",
                                                      first_layer, ", block ", first_block, ")"));
  }
  if (h.last) {
    const int64_t rect_cells =
        static_cast<int64_t>(h.layer_end - h.layer_begin) * (h.block_end - h.block_begin);
    const int64_t missing = num_cells_ - cells_received_ - rect_cells;
    if (missing > 0) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": marked last but ", missing,
                                                        " of ", num_cells_,
                                                        " (layer, block) cells are missing"));
    }
  }
  return absl::OkStatus();
}

absl::Status KvTransferReceiver::Accept(const KvChunkHeader& header,
                                        absl::Span<const uint8_t> payload, uint64_t checksum) {
  if (!error_.ok()) return error_;
  if (absl::Status s = Check(header, payload, checksum); !s.ok()) {
    error_ = s;
    return s;
  }
  for (int32_t l = header.layer_begin; l < header.layer_end; ++l) {
    for (int32_t b = header.block_begin; b < header.block_end; ++b) {
      received_[static_cast<size_t>(CellIndex(l, b))] = true;
    }
  }
  cells_received_ += static_cast<int64_t>(header.layer_end - header.layer_begin) *
                     (header.block_end - header.block_begin);
  bytes_received_ += static_cast<int64_t>(payload.size());
  ++chunks_received_;
  if (header.last) {
    last_seen_ = true;
    complete_ = true;  // Check() proved no cell is missing
    first_token_ = header.first_token;
  }
  return absl::OkStatus();
}

// ---- KvTransferPlanner ---------------------------------------------------------------------

KvChunkHeader MakeChunkHeader(const std::string& request_id, const std::string& reservation_id,
                              int64_t num_tokens, const ChunkRect& rect, int32_t first_token) {
  KvChunkHeader h;
  h.request_id = request_id;
  h.reservation_id = reservation_id;
  h.seq_no = rect.seq_no;
  h.layer_begin = rect.layer_begin;
  h.layer_end = rect.layer_end;
  h.block_begin = rect.block_begin;
  h.block_end = rect.block_end;
  h.num_tokens = num_tokens;
  h.last = rect.last;
  h.first_token = rect.last ? first_token : 0;
  return h;
}

absl::StatusOr<KvTransferPlanner> KvTransferPlanner::Create(PlannerOptions options) {
  if (options.num_layers < 1 || options.num_tokens < 1 || options.block_size < 1 ||
      options.max_chunk_payload_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV transfer planner: num_layers (", options.num_layers, "), num_tokens (",
                     options.num_tokens, "), block_size (", options.block_size,
                     ") and max_chunk_payload_bytes (", options.max_chunk_payload_bytes,
                     ") must all be positive"));
  }
  if (!options.payload_bytes) {
    return absl::InvalidArgumentError("KV transfer planner: no payload_bytes function");
  }
  const int64_t num_blocks = (options.num_tokens + options.block_size - 1) / options.block_size;
  if (options.skip_blocks < 0 || options.skip_blocks >= num_blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV transfer planner: skip_blocks (", options.skip_blocks,
                     ") must be in [0, ", num_blocks, "): the last block is always sent"));
  }
  if (num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV transfer planner: ", num_blocks, " blocks do not fit in int32"));
  }
  const auto nb = static_cast<int32_t>(num_blocks);
  for (int32_t l = 0; l < options.num_layers; ++l) {
    for (int32_t b = 0; b < nb; ++b) {
      const int64_t bytes = options.payload_bytes(l, l + 1, b, b + 1);
      if (bytes < 0 || bytes > options.max_chunk_payload_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "KV transfer planner: the cell (layer ", l, ", block ", b, ") has ", bytes,
            " payload bytes, outside the chunk budget [0, ", options.max_chunk_payload_bytes, "]"));
      }
    }
  }
  return KvTransferPlanner(std::move(options), nb);
}

KvTransferPlanner::KvTransferPlanner(PlannerOptions options, int32_t num_blocks)
    : options_(std::move(options)),
      num_blocks_(num_blocks),
      sent_blocks_(static_cast<size_t>(options_.num_layers), options_.skip_blocks),
      cells_planned_(static_cast<int64_t>(options_.num_layers) * options_.skip_blocks) {}

absl::StatusOr<std::vector<ChunkRect>> KvTransferPlanner::OnLayersReady(int32_t layer_end) {
  return OnBlocksReady(layer_end, num_blocks_);
}

absl::StatusOr<std::vector<ChunkRect>> KvTransferPlanner::OnBlocksReady(int32_t layer_end,
                                                                        int32_t block_end) {
  if (layer_end < 0 || layer_end > options_.num_layers || block_end < 0 ||
      block_end > num_blocks_) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV transfer planner: ready layers ", layer_end, " / blocks ", block_end,
                     " outside [0, ", options_.num_layers, "] / [0, ", num_blocks_, "]"));
  }
  std::vector<ChunkRect> out;
  int32_t l = 0;
  while (l < layer_end) {
    const int32_t from = sent_blocks_[static_cast<size_t>(l)];
    if (from >= block_end) {
      ++l;
      continue;
    }
    // A run of layers that all miss exactly the blocks [from, block_end).
    int32_t run_end = l + 1;
    while (run_end < layer_end && sent_blocks_[static_cast<size_t>(run_end)] == from) ++run_end;
    Split(l, run_end, from, block_end, &out);
    for (int32_t i = l; i < run_end; ++i) sent_blocks_[static_cast<size_t>(i)] = block_end;
    cells_planned_ += static_cast<int64_t>(run_end - l) * (block_end - from);
    l = run_end;
  }
  if (!out.empty() && cells_planned_ == static_cast<int64_t>(options_.num_layers) * num_blocks_) {
    out.back().last = true;
    done_ = true;
  }
  return out;
}

void KvTransferPlanner::Split(int32_t layer_begin, int32_t layer_end, int32_t block_begin,
                              int32_t block_end, std::vector<ChunkRect>* out) {
  const PayloadBytesFn& bytes = options_.payload_bytes;
  const int64_t budget = options_.max_chunk_payload_bytes;
  int32_t l = layer_begin;
  while (l < layer_end) {
    if (bytes(l, l + 1, block_begin, block_end) <= budget) {
      // Whole rows fit: pack as many layers as the budget allows.
      int32_t l2 = l + 1;
      while (l2 < layer_end && bytes(l, l2 + 1, block_begin, block_end) <= budget) ++l2;
      Emit(l, l2, block_begin, block_end, out);
      l = l2;
      continue;
    }
    // One layer's row is too big: split it by blocks (every single cell fits, see Create).
    int32_t b = block_begin;
    while (b < block_end) {
      int32_t b2 = b + 1;
      while (b2 < block_end && bytes(l, l + 1, b, b2 + 1) <= budget) ++b2;
      Emit(l, l + 1, b, b2, out);
      b = b2;
    }
    ++l;
  }
}

void KvTransferPlanner::Emit(int32_t layer_begin, int32_t layer_end, int32_t block_begin,
                             int32_t block_end, std::vector<ChunkRect>* out) {
  ChunkRect r;
  r.seq_no = next_seq_no_++;
  r.layer_begin = layer_begin;
  r.layer_end = layer_end;
  r.block_begin = block_begin;
  r.block_end = block_end;
  r.payload_bytes = options_.payload_bytes(layer_begin, layer_end, block_begin, block_end);
  out->push_back(r);
}

}  // namespace duet::kv
