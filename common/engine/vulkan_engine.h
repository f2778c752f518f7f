// The Vulkan engine: the llama/qwen2 forward of common/model/cpu_forward.h recorded with the
// common/vk launchers over a device-resident paged KV pool (common/kv/paged_kv.h semantics,
// reproduced exactly by the kv_seal / attention / kv_write kernels).
//
// Device memory:
//   - weights: every 2-D tensor in its GGUF type (F32, F16, Q8_0, Q4_0; BF16 is widened to
//     F32), one buffer each except a layer's q | k | v and gate | up, which share one where they
//     can (the decode steps' fused matvecs read them as one), dequantized on the fly by the
//     matmul kernels; norms and biases
//     as f32; the RoPE table (vk::MakeRopeTable).
//   - KV: per layer K and V data [num_blocks][num_kv_heads][block_size][head_dim] and (FP8)
//     scales [num_blocks][num_kv_heads]; the f16 tail of every slot (FP8).
//   - activations for the largest step so far (grown on demand), a decode scratch for the
//     split-K attention, and per VerifyBatch a buffer with its K/V rows
//     [num_layers][K|V][rows, kv_dim], shared by its items' pending Verifies until the last
//     of them is committed or dropped.
//
// Each call records its whole step (embedding, every layer, final norm, logits, and argmax for
// DecodeStepGreedy and VerifyBatchGreedy) into one command list and submits it once; a
// CommitBatch submits nothing: its per-layer commit of the accepted rows is recorded at the
// start of the engine's next call that touches the KV (a step, in that step's submission, so a
// speculative step costs one submission, not two; ExportKv, ImportKv and an observed Prefill
// submit it on its own first). A commit that cannot be submitted makes that call fail and stays
// queued. A Prefill longer than
// kMaxPrefillChunk tokens is run as several chunks (one submit each). Decode-shaped steps
// (DecodeStep, Verify) always use the matrix-vector kernel and split-K attention with a fixed
// partition size, so a sequence's results do not depend on the rest of its batch.
//
// A Prefill with an observer submits each chunk's layers in groups on two command lists in
// turn: group k + 1 is submitted before the engine waits for group k, then the callback runs
// while group k + 1 computes. Every submission but the first starts with a no-op fill, so that
// its first real command comes after a barrier, which orders it after the previous group
// (still running; CommandList puts no barrier before a submission's first command).
//
// ExportKv / ImportKv copy the cells of a payload (kv_payload.h) between the KV buffers and
// the host: with a plain memcpy when the KV buffers are host-visible (unified memory: lavapipe,
// integrated GPUs), else through a staging buffer with all the rectangle's copies in one
// submission of a third command list (so an export from an observer callback does not touch
// the lists a group is running on). Exports only read finished layers' bytes, which no running
// group writes.
#ifndef DUET_COMMON_ENGINE_VULKAN_ENGINE_H_
#define DUET_COMMON_ENGINE_VULKAN_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/engine/engine.h"
#include "common/engine/engine_util.h"
#include "common/kv/paged_kv.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"
#include "common/vk/buffer.h"
#include "common/vk/command_list.h"
#include "common/vk/device.h"
#include "common/vk/ops_attention.h"
#include "common/vk/ops_matmul.h"
#include "common/vk/pipeline.h"

namespace duet {

class VulkanEngine final : public Engine {
 public:
  // Prompt tokens per submitted chunk of a Prefill (bounds the activation memory).
  static constexpr int64_t kMaxPrefillChunk = 512;

  // Opens the device (options.vk_device, else DUET_VK_DEVICE, else automatic), uploads the
  // weights (a progress bar on stderr for models over ProgressBar::kMinBytes) and allocates the
  // KV pool. Errors: the model's (ModelConfigFromGguf / BindWeights), the KV options, device
  // selection (NOT_FOUND listing the devices), profiling without timestamp support
  // (FAILED_PRECONDITION), RESOURCE_EXHAUSTED when device memory runs out.
  static absl::StatusOr<std::unique_ptr<VulkanEngine>> Create(std::shared_ptr<const GgufFile> file,
                                                              const EngineOptions& options);
  ~VulkanEngine() override;

  const ModelConfig& config() const override { return config_; }
  const kv::KvLayout& kv_layout() const override { return layout_; }
  std::string backend_name() const override;

  using Engine::Prefill;
  absl::StatusOr<std::vector<float>> Prefill(const SequenceRef& seq,
                                             absl::Span<const int32_t> tokens, bool all_logits,
                                             const PrefillObserver* observer) override;
  absl::StatusOr<std::vector<float>> DecodeStep(absl::Span<const DecodeItem> batch) override;
  absl::StatusOr<std::vector<int32_t>> DecodeStepGreedy(
      absl::Span<const DecodeItem> batch) override;
  absl::StatusOr<std::vector<float>> VerifyBatch(absl::Span<const VerifyItem> batch) override;
  absl::StatusOr<std::vector<int32_t>> VerifyBatchGreedy(
      absl::Span<const VerifyItem> batch) override;
  absl::Status CommitBatch(absl::Span<const CommitItem> batch) override;
  absl::StatusOr<std::vector<uint8_t>> ExportKv(const SequenceRef& seq, int64_t num_tokens,
                                                const kv::KvRect& rect) override;
  absl::Status ImportKv(const SequenceRef& seq, int64_t num_tokens, const kv::KvRect& rect,
                        absl::Span<const uint8_t> payload) override;
  std::string ProfileReport() const override;

  const vk::Device& device() const { return *device_; }
  // Tests and benchmarks: copy KV through the staging buffer even when the KV buffers are
  // host-visible (the path discrete GPUs take).
  void set_kv_copies_via_staging(bool staging) { kv_copies_via_staging_ = staging; }

 private:
  // Rows of the pre-expanded bias buffers (qwen2): bias adds run in chunks of this many rows.
  static constexpr int64_t kBiasRows = 64;

  struct LayerWeights {
    vk::WeightView q, k, v, o, gate, up, down;
    // The same rows as one weight each (q | k | v, gate | up) for the decode-shaped steps' fused
    // matvecs; data empty where they could not share a buffer (UploadWeights).
    vk::WeightView qkv, gate_up;
    vk::BufferView attn_norm, ffn_norm;     // f32 [hidden]
    vk::BufferView q_bias, k_bias, v_bias;  // f32 [kBiasRows, dim]; empty without biases
  };
  struct Weights {
    std::vector<vk::Buffer> buffers;  // owns every view below
    vk::WeightView token_embd, output;
    vk::BufferView output_norm;  // f32 [hidden]
    vk::BufferView rope_table;   // uint32 [rope_dim]
    std::vector<LayerWeights> layers;
  };
  struct KvBuffers {
    std::vector<vk::Buffer> k_data, v_data, k_scales, v_scales;  // [num_layers]
    vk::Buffer tail;                                             // FP8 only
  };
  // Per-step buffers for up to `rows` rows (and `logit_rows` rows of logits).
  struct Activations {
    int64_t rows = 0;
    int64_t logit_rows = 0;
    uint64_t table_words = 0;
    vk::Buffer tokens, positions, seq_table;  // kUpload: int32 [rows], int32 [rows], uint32
    vk::Buffer x, h;                          // f32 [rows, hidden]
    vk::Buffer q, attn;                       // f32 [rows, q_dim]
    vk::Buffer k_new, v_new;                  // f32 [rows, kv_dim]
    vk::Buffer gate, up;                      // f32 [rows, ffn]
    vk::Buffer logits;                        // f32 [logit_rows, vocab]
    vk::Buffer ids;                           // int32 [logit_rows]
    vk::Buffer readback;                      // kReadback copy of logits/ids (not unified)
    vk::Buffer decode_scratch;                // split-K partials
  };
  // One sequence's part of a step: rows [row0, row0 + tokens.size()) of the batch tensors.
  struct StepSeq {
    SequenceRef seq;
    absl::Span<const int32_t> tokens;
    int64_t row0 = 0;
  };
  enum class StepKind { kPrefill, kDecode, kVerify };
  enum class LogitsOut { kNone, kLastRow, kAllRows };
  // A step's batch, with its inputs (token ids, positions, sequence table) already uploaded.
  struct PreparedStep {
    std::vector<vk::AttnSequence> attn;  // block tables point into the caller's spans
    uint64_t table_words = 0;
    int64_t rows = 0;
    int64_t logit_rows = 0;
  };
  // One copy between a KV buffer and the host bytes of a payload.
  struct KvCopy {
    const vk::Buffer* buffer = nullptr;  // a K/V data, scales or tail buffer
    uint64_t buffer_offset = 0;
    uint64_t payload_offset = 0;
    uint64_t bytes = 0;
  };
  // Where a VerifyBatch keeps its K/V rows until Commit: layer l's K (part 0) or V (part 1)
  // rows start at (2 l + part) * stride; an item's rows start at row0.
  struct Stash {
    std::shared_ptr<vk::Buffer> buffer;
    uint64_t stride = 0;
    int64_t row0 = 0;
    uint64_t Offset(int64_t layer, int part) const {
      return (static_cast<uint64_t>(layer) * 2 + static_cast<uint64_t>(part)) * stride;
    }
  };

  VulkanEngine(std::shared_ptr<const GgufFile> file, ModelConfig config, kv::KvLayout layout,
               std::unique_ptr<vk::Device> device);

  absl::Status UploadWeights();
  absl::Status AllocateKv();
  absl::Status EnsureActivations(int64_t rows, int64_t logit_rows, uint64_t table_words,
                                 uint64_t decode_scratch_bytes);
  absl::StatusOr<vk::Buffer> NewBuffer(uint64_t bytes, vk::MemoryKind kind);

  // Records and submits one step. `stash` (Verify, row0 ignored): the K/V rows go there and nothing is
  // committed. Returns logits (float) or, when greedy, argmax ids (int32), as raw rows copied
  // into *floats / *ids.
  // With an observer (a one-sequence prefill), the layers run in groups (RunLayerGroups).
  absl::Status RunStep(StepKind kind, absl::Span<const StepSeq> seqs, LogitsOut logits_out,
                       bool greedy, const Stash* stash, std::vector<float>* floats,
                       std::vector<int32_t>* ids, const PrefillObserver* observer = nullptr);
  // Builds the batch and uploads its inputs (growing the activations as needed).
  absl::StatusOr<PreparedStep> PrepareStep(StepKind kind, absl::Span<const StepSeq> seqs,
                                           LogitsOut logits_out);
  // Records layers [layer_begin, layer_end) of a prepared step into `cl`, preceded by the
  // embedding when layer_begin == 0 and followed by the logits (and argmax when greedy) when
  // layer_end == num_layers.
  absl::Status RecordStep(vk::CommandList& cl, StepKind kind, const PreparedStep& prepared,
                          int64_t layer_begin, int64_t layer_end, LogitsOut logits_out, bool greedy,
                          const Stash* stash);
  // Submits a prefill's layer groups on cl_ and cl_alt_ in turn and calls the observer after
  // each (see the file comment). num_tokens: the chunk's end position.
  absl::Status RunLayerGroups(const PreparedStep& step, LogitsOut logits_out,
                              const PrefillObserver& observer, int64_t num_tokens);
  // Copies logits or ids of a finished step to the host.
  void ReadResults(const PreparedStep& step, bool greedy, std::vector<float>* floats,
                   std::vector<int32_t>* ids) const;
  // A CommitBatch's commit of accepted Verify rows, all in one stash, queued until the next
  // call that touches the KV (file comment).
  struct QueuedCommit {
    struct Seq {
      std::vector<int32_t> block_table;
      int64_t row0 = 0;  // the sequence's first row in the stash
      int64_t num_cached = 0;
      int64_t accepted = 0;
      int32_t tail_slot = -1;
    };
    std::vector<Seq> seqs;
    Stash stash;  // keeps the rows alive
  };
  // Records every queued commit into `cl` (their sequence tables go to commit_tables_), ahead
  // of whatever `cl` records next. The caller submits `cl` and then drops the queue.
  absl::Status RecordQueuedCommits(vk::CommandList& cl);
  // Submits the queued commits on their own (before a call that reads or overwrites the KV
  // outside a step); a no-op when none is queued.
  absl::Status FlushQueuedCommits();
  absl::StatusOr<std::vector<float>> VerifyLogits(absl::Span<const VerifyItem> batch, bool greedy,
                                                  std::vector<int32_t>* ids);
  // Discards a failed recording (a fresh command list; the half-recorded one never runs).
  // Leaves *list null when creation fails (the next use reports it).
  void ResetCommandList() { ResetList(&cl_, profile_); }
  void ResetList(std::unique_ptr<vk::CommandList>* list, bool profiling);
  // The copies of a payload's cells, adjacent ones merged (vulkan_kv_transfer.cc).
  std::vector<KvCopy> KvCopies(absl::Span<const kv::KvCell> cells, int32_t tail_slot) const;
  // Runs `copies` from the KV buffers into `to_host`, or from `from_host` into them (exactly
  // one is non-null; payload_bytes long).
  absl::Status TransferKv(absl::Span<const KvCopy> copies, const uint8_t* from_host,
                          uint8_t* to_host, uint64_t payload_bytes);
  // A stash for `rows` K/V rows per layer and part: a pooled buffer nothing else holds (no
  // pending verify, no queued commit, and every submission is waited for) when one is large
  // enough, else a new one.
  absl::StatusOr<Stash> NewStash(int64_t rows);
  vk::KvLayerViews CacheViews(int64_t layer) const;
  absl::StatusOr<std::vector<float>> DecodeLogits(absl::Span<const DecodeItem> batch, bool greedy,
                                                  std::vector<int32_t>* ids);

  std::shared_ptr<const GgufFile> file_;
  ModelConfig config_;
  kv::KvLayout layout_;
  // Destroyed last (members are destroyed in reverse order): everything below uses it.
  std::unique_ptr<vk::Device> device_;
  std::unique_ptr<vk::Kernels> kernels_;
  std::unique_ptr<vk::CommandList> cl_;
  std::unique_ptr<vk::CommandList> cl_alt_;   // layer groups alternate between cl_ and it
  std::unique_ptr<vk::CommandList> xfer_cl_;  // staged KV copies
  bool profile_ = false;
  bool kv_copies_via_staging_ = false;
  vk::MatMulConfig prefill_matmul_;
  vk::MatMulConfig decode_matmul_;  // matvec for every batch size (batch invariance)
  vk::DecodeOptions decode_attn_;
  Weights weights_;
  KvBuffers kv_;
  Activations act_;
  engine_internal::PendingVerifies<Stash> verifies_;
  std::vector<QueuedCommit> queued_commits_;
  // Stash buffers kept for reuse (a speculative step needs one and its commit, queued into the
  // next step, still holds the previous one: two alternate). At most kMaxPooledStashes.
  std::vector<std::shared_ptr<vk::Buffer>> stash_pool_;
  vk::Buffer commit_tables_;  // kUpload: the queued commits' sequence tables, back to back
  engine_internal::ObserverGate gate_;
  vk::Buffer order_marker_;    // target of the no-op fills that open layer groups
  vk::Buffer export_staging_;  // kReadback, grown on demand
  vk::Buffer import_staging_;  // kUpload, grown on demand
};

}  // namespace duet

#endif  // DUET_COMMON_ENGINE_VULKAN_ENGINE_H_
