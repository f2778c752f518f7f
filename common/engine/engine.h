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
// Thread safety: not thread-safe; one thread drives an engine.
#ifndef DUET_COMMON_ENGINE_ENGINE_H_
#define DUET_COMMON_ENGINE_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
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
};

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
  virtual absl::StatusOr<std::vector<float>> Prefill(const SequenceRef& seq,
                                                     absl::Span<const int32_t> tokens,
                                                     bool all_logits = false) = 0;

  // One token for each of many sequences (different lengths) in one pass; commits them.
  // Returns logits [batch, vocab] in batch order. Errors as Prefill, per item.
  virtual absl::StatusOr<std::vector<float>> DecodeStep(absl::Span<const DecodeItem> batch) = 0;

  // Greedy fast path of DecodeStep: runs and commits exactly the same step, and returns per
  // batch item (in batch order) the ArgMax of its logits (lowest id on ties, NaN never chosen,
  // as duet::ArgMax) instead of the logits. Vulkan computes it on the device and copies back
  // one int per sequence. Errors as DecodeStep.
  virtual absl::StatusOr<std::vector<int32_t>> DecodeStepGreedy(
      absl::Span<const DecodeItem> batch) = 0;

  // Speculative verification: tokens = [last accepted token, d_1 .. d_k] at positions
  // num_cached .. num_cached + k, 1 <= k + 1 <= kMaxVerifyTokens. Returns logits
  // [k + 1, vocab]; commits nothing. Errors as Prefill.
  virtual absl::StatusOr<std::vector<float>> Verify(const SequenceRef& seq,
                                                    absl::Span<const int32_t> tokens) = 0;
  // Commits the first `accepted` positions of the last Verify of `seq` (0 <= accepted <= k+1).
  // A sequence is known by the block that holds position num_cached (only it writes there), so
  // other sequences may run between its Verify and its Commit. FAILED_PRECONDITION when the
  // last call for seq was not a Verify (same num_cached, tail slot and block table) covering
  // them; INVALID_ARGUMENT for accepted outside [0, k + 1].
  virtual absl::Status Commit(const SequenceRef& seq, int64_t accepted) = 0;

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

}  // namespace duet

#endif  // DUET_COMMON_ENGINE_ENGINE_H_
