// The model forward behind a backend-neutral interface, over a paged KV cache.
//
// An Engine owns the model's weights and a paged KV pool (common/kv/paged_kv.h describes the
// layout and the seal/attend/commit protocol). It does not allocate blocks: callers (the
// schedulers of the prefill and decode nodes, or a CLI) own block tables and tail slots and
// pass them in with every call. Backends: the CPU reference (CpuEngine) and Vulkan
// (VulkanEngine); both implement exactly these semantics, so nodes and tests can run either.
//
// Positions: a sequence with `num_cached` committed positions runs `tokens` at positions
// num_cached .. num_cached + n - 1. Prefill and DecodeStep commit every position they run;
// Verify commits none (the caller commits the accepted prefix with Commit).
//
// KV transfer (disaggregated serving): ExportKv copies a rectangle (layers x blocks) of a
// sequence's committed KV out as the canonical payload of common/kv/kv_payload.h; ImportKv
// writes such a payload into another engine's blocks (another pool, other block ids, another
// tail slot, either backend with the same KV dtype and geometry). A sequence whose every layer
// and block was imported continues exactly as if this engine had prefilled it. Prefill with a
// PrefillObserver reports each finished group of layers, so a prefill node can export and send
// them while the next group computes.
//
// Thread safety: not thread-safe; one thread drives an engine (observer callbacks run on it).
#ifndef DUET_COMMON_ENGINE_ENGINE_H_
#define DUET_COMMON_ENGINE_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/kv/kv_payload.h"
#include "common/kv/paged_kv.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"

namespace duet {

struct EngineOptions {
  kv::CacheDtype kv_dtype = kv::CacheDtype::kF16;
  int64_t block_size = kv::kDefaultBlockSize;
  // Pool size in blocks; 0 = derive from kv_pool_bytes.
  int64_t num_kv_blocks = 0;
  int64_t kv_pool_bytes = int64_t{256} << 20;
  // Sequences that may hold an FP8 tail at once (the most sequences in flight).
  int64_t max_sequences = 64;
  // Vulkan: device choice ("" = DUET_VK_DEVICE or automatic) and per-kernel timing.
  std::string vk_device;
  bool profile = false;
  // CPU Vulkan drivers (lavapipe): worker threads per dispatch, 0 = run on the submitting thread,
  // -1 = the driver's default (vk::DeviceOptions::cpu_threads).
  int vk_cpu_threads = -1;
};

// The most worker threads EngineOptions::vk_cpu_threads may ask for (vk::kMaxCpuThreads).
inline constexpr int kMaxVkCpuThreads = 256;

// The most tokens one Verify call takes (the last accepted token and up to 31 drafts).
inline constexpr int64_t kMaxVerifyTokens = 32;

// One sequence's part of a call.
struct SequenceRef {
  absl::Span<const int32_t> block_table;  // covers every position the call touches
  int64_t num_cached = 0;                 // committed positions before this call
  int32_t tail_slot = -1;                 // FP8: in [0, max_sequences); ignored otherwise
};

struct DecodeItem {
  SequenceRef seq;
  int32_t token = 0;  // runs at position seq.num_cached
};

// One sequence's part of a batched Verify: tokens = [last accepted token, d_1 .. d_k] at
// positions seq.num_cached .. seq.num_cached + k, 1 <= k + 1 <= kMaxVerifyTokens.
struct VerifyItem {
  SequenceRef seq;
  absl::Span<const int32_t> tokens;
};

// One sequence's part of a batched Commit: the first `accepted` positions of its pending Verify.
struct CommitItem {
  SequenceRef seq;
  int64_t accepted = 0;
};

// What a Prefill has finished when its observer is called.
struct PrefillProgress {
  // Layers [0, layers_done) hold the final KV of positions [0, num_tokens): committed, FP8
  // blocks sealed, the tail slot written. Layers [layers_done, num_layers) are still running.
  int64_t layers_done = 0;
  int64_t num_layers = 0;
  int64_t num_tokens = 0;
};

// Layer-wise progress of a Prefill (Engine::Prefill with an observer).
//
// The layers run in groups of layers_per_group (the last may be smaller); after each group
// completes, on_layers_done is called on the calling thread, in order, layers_done increasing
// to num_layers. On Vulkan each group is its own submission and the next group is submitted
// before the engine waits for the current one, so the callback overlaps the next group's
// compute. A Prefill the engine splits into chunks (VulkanEngine::kMaxPrefillChunk) reports
// every chunk's groups, num_tokens being the end of that chunk. Results (logits and KV) are
// bit-identical with and without an observer.
//
// Inside the callback the only allowed engine call is ExportKv of this sequence with
// rect.layer_end <= layers_done and num_tokens <= progress.num_tokens (other layers are being
// written); anything else returns FAILED_PRECONDITION. A non-OK return stops the Prefill: it
// returns that status once the work in flight has finished, and the sequence's KV is undefined
// (its blocks and tail slot must be rewritten from position 0 before the sequence is used).
struct PrefillObserver {
  int64_t layers_per_group = 1;                                        // >= 1
  std::function<absl::Status(const PrefillProgress&)> on_layers_done;  // required
};

class Engine {
 public:
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const kv::KvLayout& kv_layout() const = 0;
  // "cpu", or "vulkan (<device name>)".
  virtual std::string backend_name() const = 0;

  // Runs a chunk of one sequence's prompt and commits it. Returns the logits of the last
  // position [vocab], or of every position [n, vocab] when all_logits.
  // INVALID_ARGUMENT: empty tokens, an id outside the vocab, a block table that does not cover
  // the positions, a bad tail slot, or positions past the model's context length.
  absl::StatusOr<std::vector<float>> Prefill(const SequenceRef& seq,
                                             absl::Span<const int32_t> tokens,
                                             bool all_logits = false) {
    return Prefill(seq, tokens, all_logits, nullptr);
  }
  // The same, reporting finished layers to `observer` when non-null (see PrefillObserver; it
  // is used only during the call). Also INVALID_ARGUMENT for layers_per_group < 1 or an empty
  // on_layers_done; and the callback's own status when it fails.
  virtual absl::StatusOr<std::vector<float>> Prefill(const SequenceRef& seq,
                                                     absl::Span<const int32_t> tokens,
                                                     bool all_logits,
                                                     const PrefillObserver* observer) = 0;

  // One token for each of many sequences (different lengths) in one pass; commits them.
  // Returns logits [batch, vocab] in batch order. Errors as Prefill, per item.
  virtual absl::StatusOr<std::vector<float>> DecodeStep(absl::Span<const DecodeItem> batch) = 0;

  // Greedy fast path of DecodeStep: runs and commits exactly the same step, and returns per
  // batch item (in batch order) the ArgMax of its logits (lowest id on ties, NaN never chosen,
  // as duet::ArgMax) instead of the logits. Vulkan computes it on the device and copies back
  // one int per sequence. Errors as DecodeStep.
  virtual absl::StatusOr<std::vector<int32_t>> DecodeStepGreedy(
      absl::Span<const DecodeItem> batch) = 0;

  // Speculative verification of many sequences in one forward pass (continuous batching: a
  // sequence that drafted nothing verifies just its last token, k = 0). Each item runs as one
  // Verify; returns logits of every row [sum of (k_i + 1), vocab], items in order. Commits
  // nothing: each item becomes its sequence's pending Verify (replacing an earlier one), which
  // Commit or CommitBatch stores. Errors as Prefill, per item, with nothing run; also
  // INVALID_ARGUMENT for an empty batch, more than kMaxVerifyTokens tokens in an item, or two
  // items writing the same block.
  virtual absl::StatusOr<std::vector<float>> VerifyBatch(absl::Span<const VerifyItem> batch) = 0;
  // Greedy fast path of VerifyBatch: the same step, returning per row the ArgMax of its logits
  // (as DecodeStepGreedy; Vulkan computes it on the device).
  virtual absl::StatusOr<std::vector<int32_t>> VerifyBatchGreedy(
      absl::Span<const VerifyItem> batch) = 0;
  // Commits the first `accepted` positions of each item's pending Verify (0 <= accepted <=
  // k + 1). A backend may queue the device work for its next call that touches the KV (the
  // Vulkan engine records it into that call's submission); every later call sees it committed,
  // and a failure to run it fails that call. Every item is checked first (the errors of
  // Commit, plus INVALID_ARGUMENT for two items of one sequence); on an error nothing is
  // committed and every pending Verify stays pending.
  virtual absl::Status CommitBatch(absl::Span<const CommitItem> batch) = 0;

  // Speculative verification of one sequence: VerifyBatch of one item; logits [k + 1, vocab].
  absl::StatusOr<std::vector<float>> Verify(const SequenceRef& seq,
                                            absl::Span<const int32_t> tokens) {
    const VerifyItem item{seq, tokens};
    return VerifyBatch(absl::MakeConstSpan(&item, 1));
  }
  // Commits the first `accepted` positions of the last Verify of `seq` (0 <= accepted <= k+1).
  // A sequence is known by the block that holds position num_cached (only it writes there), so
  // other sequences may run between its Verify and its Commit. FAILED_PRECONDITION when the
  // last call for seq was not a Verify (same num_cached, tail slot and block table) covering
  // them; INVALID_ARGUMENT for accepted outside [0, k + 1].
  absl::Status Commit(const SequenceRef& seq, int64_t accepted) {
    const CommitItem item{seq, accepted};
    return CommitBatch(absl::MakeConstSpan(&item, 1));
  }

  // The KV of `rect` of a sequence holding num_tokens committed positions, as the payload of
  // common/kv/kv_payload.h. The sequence is seq.block_table (covering rect.block_end blocks)
  // and, for FP8 when the rectangle holds a partial last block, seq.tail_slot; seq.num_cached
  // is ignored. REQUIRES: positions [0, num_tokens) are committed in the rectangle's layers,
  // and the sequence's num_cached is exactly num_tokens when an FP8 partial block is exported
  // (its tail slot holds only the positions of its current last block). Changes nothing.
  // INVALID_ARGUMENT (kv::ValidateRectTarget): a rectangle out of range, a block table too
  // short or with ids outside the pool, a bad tail slot.
  virtual absl::StatusOr<std::vector<uint8_t>> ExportKv(const SequenceRef& seq, int64_t num_tokens,
                                                        const kv::KvRect& rect) = 0;
  // Writes a payload exported (by any engine with the same KV layout but for num_blocks and
  // tail slots) for `rect` of a sequence of num_tokens positions into this sequence's blocks
  // and, for an FP8 partial last block, its tail slot (seq.num_cached ignored). Once every
  // layer and block of [0, num_tokens) has been imported, the sequence is exactly as if
  // Prefill had run it here: decode on with num_cached = num_tokens. A pending Verify of a
  // sequence writing one of the rectangle's blocks is dropped. INVALID_ARGUMENT, with nothing
  // written: ExportKv's errors, a payload whose size is not kv::KvPayloadBytes (both named),
  // or a malformed cell (kv::CheckCell: nonzero slots past num_tokens, a bad FP8 scale).
  virtual absl::Status ImportKv(const SequenceRef& seq, int64_t num_tokens, const kv::KvRect& rect,
                                absl::Span<const uint8_t> payload) = 0;

  // Per-kernel timing of every step so far, one row per kernel (calls, total ms, mean us,
  // share), when EngineOptions::profile is set and the backend profiles; else "".
  virtual std::string ProfileReport() const { return ""; }
};

// Creates the engine for `backend` ("cpu" or "vulkan") over a parsed GGUF file (kept alive by
// the engine). Errors: unknown backend (listing the available ones), unsupported model (from
// ModelConfigFromGguf / BindWeights), KV options (from KvLayout::Validate), Vulkan device
// selection, or out of device memory.
absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(const std::string& backend,
                                                     std::shared_ptr<const GgufFile> file,
                                                     const EngineOptions& options);

// Runs every kind of step once on scratch blocks -- prefill chunks of 1, 12, 16, ..., 32 and
// 64 tokens, DecodeStep and DecodeStepGreedy at every batch size up to 8, ExportKv and
// ImportKv, and with max_verify_rows >= 2 (a node that speculates: its most drafted tokens plus
// one) VerifyBatchGreedy of every row count from 2 to max_verify_rows, VerifyBatch and
// CommitBatch -- so that a server builds its pipelines (seconds on lavapipe) before it reports
// healthy, not inside the first request's lease or its first speculative step (where a
// pipeline build would also teach the adaptive speculation that verifying costs seconds).
// Uses blocks from 0 and tail slots from 0; it leaves garbage there, which is harmless because
// they are free (a prefill overwrites what it uses). REQUIRES: no sequence holds KV yet.
absl::Status WarmUp(Engine& engine, int64_t max_verify_rows = 0);

}  // namespace duet

#endif  // DUET_COMMON_ENGINE_ENGINE_H_
