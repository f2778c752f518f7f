#include "common/engine/engine_util.h"

#include <set>

#include "common/base/status.h"

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
  std::vector<VerifyItem> items;
  items.reserve(batch.size());
  for (const DecodeItem& d : batch) items.push_back(VerifyItem{d.seq, {&d.token, 1}});
  return CheckVerifyBatch(config, layout, items, op);
}

absl::Status CheckVerifyBatch(const ModelConfig& config, const kv::KvLayout& layout,
                              absl::Span<const VerifyItem> batch, const std::string& op) {
  if (batch.empty()) return absl::InvalidArgumentError(absl::StrCat(op, ": empty batch"));
  std::set<int32_t> blocks;
  std::set<int32_t> tails;
  for (size_t i = 0; i < batch.size(); ++i) {
    const std::string item = absl::StrCat(op, " item ", i);
    const int64_t n = static_cast<int64_t>(batch[i].tokens.size());
    if (n > kMaxVerifyTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat(item, ": ", n, " tokens (at most ", kMaxVerifyTokens, ")"));
    }
    DUET_RETURN_IF_ERROR(CheckTokens(config, batch[i].tokens, item));
    DUET_RETURN_IF_ERROR(CheckSequence(config, layout, batch[i].seq, n, item));
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

absl::Status CheckObserver(const PrefillObserver* observer) {
  if (observer == nullptr) return absl::OkStatus();
  if (observer->layers_per_group < 1) {
    return absl::InvalidArgumentError(absl::StrCat("Prefill: observer layers_per_group ",
                                                   observer->layers_per_group, " must be >= 1"));
  }
  if (!observer->on_layers_done) {
    return absl::InvalidArgumentError("Prefill: observer has no on_layers_done callback");
  }
  return absl::OkStatus();
}

absl::Status ObserverGate::Notify(const PrefillObserver& observer,
                                  const PrefillProgress& progress) {
  active_ = true;
  progress_ = progress;
  absl::Status status = observer.on_layers_done(progress);
  active_ = false;
  return status;
}

absl::Status ObserverGate::CheckIdle(const std::string& op) const {
  if (!active_) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(op,
                   ": called from inside a PrefillObserver callback, which may only ExportKv "
                   "the finished layers"));
}

absl::Status ObserverGate::CheckExport(int64_t num_tokens, const kv::KvRect& rect) const {
  if (!active_) return absl::OkStatus();
  if (rect.layer_end > progress_.layers_done) {
    return absl::FailedPreconditionError(
        absl::StrCat("ExportKv inside a PrefillObserver callback: layer_end ", rect.layer_end,
                     " > layers_done ", progress_.layers_done, " (later layers are running)"));
  }
  if (num_tokens > progress_.num_tokens) {
    return absl::FailedPreconditionError(
        absl::StrCat("ExportKv inside a PrefillObserver callback: num_tokens ", num_tokens,
                     " > the ", progress_.num_tokens, " positions finished so far"));
  }
  return absl::OkStatus();
}

}  // namespace duet::engine_internal
