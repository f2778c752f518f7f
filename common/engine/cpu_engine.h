// The CPU reference engine: the model forward of common/model/cpu_forward.h (cpu_ref ops, f32
// activations, dot products in double) over the paged KV store kv::PagedKvCache, for every KV
// dtype (F32, F16, FP8). It is the numerics oracle of the Vulkan engine at each dtype, and with
// an F32 cache its logits equal CpuModel::Forward's bit for bit (same ops in the same order).
//
// Sequences are independent rows: DecodeStep runs each item as a one-token step, so results
// never depend on the batch. Slow on purpose (double accumulation, one thread).
#ifndef DUET_COMMON_ENGINE_CPU_ENGINE_H_
#define DUET_COMMON_ENGINE_CPU_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/engine/engine.h"
#include "common/engine/engine_util.h"
#include "common/kv/paged_kv.h"
#include "common/model/cpu_forward.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"
#include "common/model/model_weights.h"

namespace duet {

class CpuEngine final : public Engine {
 public:
  // Errors from ModelConfigFromGguf, BindWeights and the KV options (MakeKvLayout).
  static absl::StatusOr<std::unique_ptr<CpuEngine>> Create(std::shared_ptr<const GgufFile> file,
                                                           const EngineOptions& options);

  const ModelConfig& config() const override { return config_; }
  const kv::KvLayout& kv_layout() const override { return cache_.layout(); }
  std::string backend_name() const override { return "cpu"; }

  using Engine::Prefill;
  // Observer: called after each group of layers (on the CPU nothing overlaps it).
  absl::StatusOr<std::vector<float>> Prefill(const SequenceRef& seq,
                                             absl::Span<const int32_t> tokens, bool all_logits,
                                             const PrefillObserver* observer) override;
  absl::StatusOr<std::vector<float>> DecodeStep(absl::Span<const DecodeItem> batch) override;
  absl::StatusOr<std::vector<int32_t>> DecodeStepGreedy(
      absl::Span<const DecodeItem> batch) override;
  // One sequence after another (the reference has no batched forward).
  absl::StatusOr<std::vector<float>> VerifyBatch(absl::Span<const VerifyItem> batch) override;
  absl::StatusOr<std::vector<int32_t>> VerifyBatchGreedy(
      absl::Span<const VerifyItem> batch) override;
  absl::Status CommitBatch(absl::Span<const CommitItem> batch) override;
  // kv::ExportRect / kv::ImportRect over the cache.
  absl::StatusOr<std::vector<uint8_t>> ExportKv(const SequenceRef& seq, int64_t num_tokens,
                                                const kv::KvRect& rect) override;
  absl::Status ImportKv(const SequenceRef& seq, int64_t num_tokens, const kv::KvRect& rect,
                        absl::Span<const uint8_t> payload) override;

 private:
  // A step's pending K and V rows, per layer: [num_layers][n, kv_dim] each.
  struct PendingKv {
    std::vector<std::vector<float>> k;
    std::vector<std::vector<float>> v;
  };

  CpuEngine(std::shared_ptr<const GgufFile> file, ModelConfig config, ModelWeights weights,
            kv::PagedKvCache cache);

  // Runs `tokens` of one (checked) sequence at positions num_cached.. through every layer.
  // Commits them when `commit`; keeps the K/V rows in *pending when non-null; reports groups
  // of layers to `observer` when non-null. Returns logits [n, vocab] when all_logits, else
  // [vocab] of the last token.
  absl::StatusOr<std::vector<float>> Run(const SequenceRef& seq, absl::Span<const int32_t> tokens,
                                         bool all_logits, bool commit, PendingKv* pending,
                                         const PrefillObserver* observer = nullptr);
  // x: [n, hidden], updated in place.
  absl::Status RunLayer(int64_t layer, const kv::SequenceView& view, int64_t n, float* x,
                        bool commit, PendingKv* pending);

  std::shared_ptr<const GgufFile> file_;
  ModelConfig config_;
  ModelWeights weights_;
  kv::PagedKvCache cache_;
  cpu_ref::SmallWeights small_;  // norms, biases, rope factors as f32
  engine_internal::PendingVerifies<PendingKv> verifies_;
  engine_internal::ObserverGate gate_;
};

}  // namespace duet

#endif  // DUET_COMMON_ENGINE_CPU_ENGINE_H_
