#include "common/engine/engine_util.h"

#include <set>

namespace duet::engine_internal {

absl::StatusOr<kv::KvLayout> MakeKvLayout(const ModelConfig& config, const EngineOptions& options) {
  kv::KvLayout layout;
  layout.num_layers = config.num_layers;
  layout.num_kv_heads = config.num_kv_heads;
  layout.head_dim = config.head_dim;
  layout.block_size = options.block_size;
  layout.dtype = options.kv_dtype;
  if (options.max_sequences < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_sequences must be >= 1, got ", options.max_sequences));
  }
  layout.num_tail_slots = options.kv_dtype == kv::CacheDtype::kFp8E4M3 ? options.max_sequences : 0;
  if (absl::Status status = layout.Validate(); !status.ok()) return status;
  layout.num_blocks = options.num_kv_blocks > 0 ? options.num_kv_blocks
                                                : kv::BlocksThatFit(layout, options.kv_pool_bytes);
  if (options.num_kv_blocks < 0 || layout.num_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the KV pool holds no block: num_kv_blocks ", options.num_kv_blocks, ", kv_pool_bytes ",
        options.kv_pool_bytes, ", one block takes ", layout.block_bytes(), " bytes"));
  }
  if (layout.num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV pool has ", layout.num_blocks, " blocks (at most 2^31 - 1)"));
  }
  return layout;
}

absl::Status CheckTokens(const ModelConfig& config, absl::Span<const int32_t> tokens,
                         const std::string& op) {
  if (tokens.empty()) return absl::InvalidArgumentError(absl::StrCat(op, ": no tokens"));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": token ", i, " has id ", tokens[i],
                                                     ", outside [0, ", config.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSequence(const ModelConfig& config, const kv::KvLayout& layout,
                           const SequenceRef& seq, int64_t n, const std::string& op) {
  if (seq.num_cached < 0 || n < 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": num_cached ", seq.num_cached,
                                                   " must be >= 0 and tokens >= 1 (got ", n, ")"));
  }
  const int64_t end = seq.num_cached + n;
  if (end > config.context_length) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", n, " tokens after ", seq.num_cached,
                                                   " cached exceed the model's context length of ",
                                                   config.context_length));
  }
  const int64_t blocks = (end + layout.block_size - 1) / layout.block_size;
  if (static_cast<int64_t>(seq.block_table.size()) < blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the block table has ", seq.block_table.size(),
                     " blocks; positions [0, ", end, ") need ", blocks));
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const int32_t id = seq.block_table[static_cast<size_t>(b)];
    if (id < 0 || id >= layout.num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": block table entry ", b, " = ", id,
                                                     " is outside the pool [0, ", layout.num_blocks,
                                                     ")"));
    }
  }
  if (layout.dtype == kv::CacheDtype::kFp8E4M3 &&
      (seq.tail_slot < 0 || seq.tail_slot >= layout.num_tail_slots)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": tail slot ", seq.tail_slot,
                                                   " is outside [0, ", layout.num_tail_slots, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckBatch(const ModelConfig& config, const kv::KvLayout& layout,
                        absl::Span<const DecodeItem> batch, const std::string& op) {
  if (batch.empty()) return absl::InvalidArgumentError(absl::StrCat(op, ": empty batch"));
  std::set<int32_t> blocks;
  std::set<int32_t> tails;
  for (size_t i = 0; i < batch.size(); ++i) {
    const std::string item = absl::StrCat(op, " item ", i);
    if (absl::Status s = CheckTokens(config, absl::MakeConstSpan(&batch[i].token, 1), item);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckSequence(config, layout, batch[i].seq, 1, item); !s.ok()) return s;
    if (!blocks.insert(WriteBlock(layout, batch[i].seq)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(item, ": writes block ", WriteBlock(layout, batch[i].seq),
                       ", which an earlier item of the batch also writes"));
    }
    if (layout.dtype == kv::CacheDtype::kFp8E4M3 && !tails.insert(batch[i].seq.tail_slot).second) {
      return absl::InvalidArgumentError(absl::StrCat(item, ": tail slot ", batch[i].seq.tail_slot,
                                                     " is used by an earlier item"));
    }
  }
  return absl::OkStatus();
}

}  // namespace duet::engine_internal
