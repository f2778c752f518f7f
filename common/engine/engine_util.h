// Pieces both engine backends share (internal to common/engine): the KV pool's layout from the
// options, argument checks (so both backends reject the same calls with the same messages,
// before touching any state), the bookkeeping of Verify calls awaiting their Commit, and what
// a PrefillObserver callback may do while it runs.
#ifndef DUET_COMMON_ENGINE_ENGINE_UTIL_H_
#define DUET_COMMON_ENGINE_ENGINE_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/base/status.h"
#include "common/engine/engine.h"
#include "common/kv/paged_kv.h"
#include "common/model/model_config.h"

namespace duet::engine_internal {

// The pool for `config` under `options`: num_kv_blocks, or as many blocks as fit in
// kv_pool_bytes (the f16 tail of FP8 comes on top); max_sequences tail slots for FP8.
// INVALID_ARGUMENT from KvLayout::Validate, for a pool of 0 blocks, or max_sequences < 1.
absl::StatusOr<kv::KvLayout> MakeKvLayout(const ModelConfig& config, const EngineOptions& options);

// INVALID_ARGUMENT "<op>: token i has id X, outside [0, vocab)" for the first bad id, or for
// an empty span.
absl::Status CheckTokens(const ModelConfig& config, absl::Span<const int32_t> tokens,
                         const std::string& op);

// Checks that `seq` may run n >= 1 new positions: num_cached >= 0, positions within the
// model's context length, a block table covering them with ids in [0, num_blocks), and (FP8)
// a tail slot in [0, num_tail_slots). INVALID_ARGUMENT naming the problem otherwise.
absl::Status CheckSequence(const ModelConfig& config, const kv::KvLayout& layout,
                           const SequenceRef& seq, int64_t n, const std::string& op);

// CheckTokens + CheckSequence for every item, and that no two items write the same block or
// (FP8) use the same tail slot. Errors name the batch index.
absl::Status CheckBatch(const ModelConfig& config, const kv::KvLayout& layout,
                        absl::Span<const DecodeItem> batch, const std::string& op);
// The same for a batched Verify: each item has 1..kMaxVerifyTokens tokens.
absl::Status CheckVerifyBatch(const ModelConfig& config, const kv::KvLayout& layout,
                              absl::Span<const VerifyItem> batch, const std::string& op);

// INVALID_ARGUMENT unless observer is null or has layers_per_group >= 1 and a callback.
absl::Status CheckObserver(const PrefillObserver* observer);

// While a PrefillObserver callback runs: what it has been told. Both backends enforce the
// same rule (engine.h): only ExportKv of finished layers.
class ObserverGate {
 public:
  // Runs observer.on_layers_done(progress) with the gate open.
  absl::Status Notify(const PrefillObserver& observer, const PrefillProgress& progress);
  // FAILED_PRECONDITION naming `op` while a callback runs.
  absl::Status CheckIdle(const std::string& op) const;
  // OK outside callbacks; inside, OK only for layers [0, layers_done) and num_tokens up to the
  // progress's, else FAILED_PRECONDITION naming the bound.
  absl::Status CheckExport(int64_t num_tokens, const kv::KvRect& rect) const;

 private:
  bool active_ = false;
  PrefillProgress progress_;
};

// The block that holds position num_cached: the one a call writes first, owned by the sequence.
// REQUIRES: CheckSequence passed for this seq.
inline int32_t WriteBlock(const kv::KvLayout& layout, const SequenceRef& seq) {
  return seq.block_table[static_cast<size_t>(seq.num_cached / layout.block_size)];
}

// Verify calls whose K/V rows wait for a Commit, keyed by WriteBlock. `Payload` holds the rows
// (host vectors on the CPU, a device buffer on Vulkan). Not thread-safe.
template <typename Payload>
class PendingVerifies {
 public:
  struct Entry {
    std::vector<int32_t> block_table;  // the blocks covering [0, num_cached + num_tokens)
    int64_t num_cached = 0;
    int32_t tail_slot = -1;
    int64_t num_tokens = 0;  // k + 1
    Payload payload;
  };

  explicit PendingVerifies(const kv::KvLayout& layout) : layout_(layout) {}

  // Records a Verify of `seq` over num_tokens positions (replacing any earlier one).
  void Put(const SequenceRef& seq, int64_t num_tokens, Payload payload) {
    Entry entry;
    const int64_t blocks =
        (seq.num_cached + num_tokens + layout_.block_size - 1) / layout_.block_size;
    entry.block_table.assign(seq.block_table.begin(), seq.block_table.begin() + blocks);
    entry.num_cached = seq.num_cached;
    entry.tail_slot = seq.tail_slot;
    entry.num_tokens = num_tokens;
    entry.payload = std::move(payload);
    entries_[WriteBlock(layout_, seq)] = std::move(entry);
  }

  // Ends the pending Verify of `seq`: its Commit, or any other call that runs it.
  // REQUIRES: CheckSequence passed (or Find found it).
  void Forget(const SequenceRef& seq) { entries_.erase(WriteBlock(layout_, seq)); }
  // Ends the pending Verify of any sequence that writes one of `block_ids` (they are being
  // overwritten, e.g. by an import).
  void ForgetBlocks(absl::Span<const int32_t> block_ids) {
    for (int32_t id : block_ids) entries_.erase(id);
  }

  // The entry of `seq` when it covers `accepted` positions, else FAILED_PRECONDITION (no
  // matching Verify) or INVALID_ARGUMENT (accepted outside [0, k + 1]).
  absl::StatusOr<Entry*> Find(const SequenceRef& seq, int64_t accepted) {
    const int64_t index = seq.num_cached / layout_.block_size;
    if (seq.num_cached < 0 || index >= static_cast<int64_t>(seq.block_table.size())) {
      return absl::FailedPreconditionError(
          absl::StrCat("Commit: no Verify is pending for a sequence with ", seq.num_cached,
                       " cached positions and ", seq.block_table.size(), " blocks"));
    }
    auto it = entries_.find(seq.block_table[static_cast<size_t>(index)]);
    if (it == entries_.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("Commit: the last call for the sequence writing block ",
                       seq.block_table[static_cast<size_t>(index)], " was not a Verify"));
    }
    Entry& e = it->second;
    const bool fp8 = layout_.dtype == kv::CacheDtype::kFp8E4M3;
    if (e.num_cached != seq.num_cached || (fp8 && e.tail_slot != seq.tail_slot)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Commit: the pending Verify ran at num_cached ", e.num_cached, " (tail slot ",
          e.tail_slot, "), not ", seq.num_cached, " (tail slot ", seq.tail_slot, ")"));
    }
    if (accepted < 0 || accepted > e.num_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("Commit: accepted ", accepted, " outside [0, ", e.num_tokens, "]"));
    }
    const size_t blocks = static_cast<size_t>((seq.num_cached + accepted + layout_.block_size - 1) /
                                              layout_.block_size);
    if (seq.block_table.size() < blocks ||
        !std::equal(e.block_table.begin(), e.block_table.begin() + blocks,
                    seq.block_table.begin())) {
      return absl::FailedPreconditionError(
          "Commit: the block table differs from the one the pending Verify ran with");
    }
    return &e;
  }

  // Find for every item of a CommitBatch, plus INVALID_ARGUMENT for two items of one
  // sequence (the same write block). Changes nothing.
  absl::StatusOr<std::vector<Entry*>> FindAll(absl::Span<const CommitItem> batch) {
    std::vector<Entry*> found;
    found.reserve(batch.size());
    std::set<int32_t> seen;
    for (size_t i = 0; i < batch.size(); ++i) {
      DUET_ASSIGN_OR_RETURN(Entry * e, Find(batch[i].seq, batch[i].accepted));
      if (!seen.insert(WriteBlock(layout_, batch[i].seq)).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            "CommitBatch item ", i, ": an earlier item commits the same sequence (block ",
            WriteBlock(layout_, batch[i].seq), ")"));
      }
      found.push_back(e);
    }
    return found;
  }

  size_t size() const { return entries_.size(); }

 private:
  kv::KvLayout layout_;
  std::map<int32_t, Entry> entries_;
};

}  // namespace duet::engine_internal

#endif  // DUET_COMMON_ENGINE_ENGINE_UTIL_H_
