// VulkanEngine: creation, device memory (weights, KV pool, activations) and the public calls.
// The recording of a step is in vulkan_step.cc.
#include "common/engine/vulkan_engine.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/progress.h"
#include "common/base/status.h"
#include "common/model/cpu_forward.h"
#include "common/model/model_weights.h"
#include "common/model/quant.h"
#include "common/vk/ops_elementwise.h"

namespace duet {
namespace {

uint64_t U64(int64_t v) { return static_cast<uint64_t>(v); }
uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

VulkanEngine::VulkanEngine(std::shared_ptr<const GgufFile> file, ModelConfig config,
                           kv::KvLayout layout, std::unique_ptr<vk::Device> device)
    : file_(std::move(file)),
      config_(std::move(config)),
      layout_(layout),
      device_(std::move(device)),
      verifies_(layout) {}

VulkanEngine::~VulkanEngine() {
  // Nothing may be in flight when the buffers go.
  for (std::unique_ptr<vk::CommandList>* list : {&cl_, &cl_alt_, &xfer_cl_}) {
    if (*list != nullptr) (void)(*list)->Wait();
  }
}

std::string VulkanEngine::backend_name() const {
  return absl::StrCat("vulkan (", device_->info().name, ")");
}

absl::StatusOr<std::unique_ptr<VulkanEngine>> VulkanEngine::Create(
    std::shared_ptr<const GgufFile> file, const EngineOptions& options) {
  if (file == nullptr) return absl::InvalidArgumentError("VulkanEngine: null GGUF file");
  DUET_ASSIGN_OR_RETURN(ModelConfig config, ModelConfigFromGguf(*file));
  DUET_ASSIGN_OR_RETURN(kv::KvLayout layout, engine_internal::MakeKvLayout(config, options));
  vk::DeviceOptions device_options;
  device_options.device = options.vk_device;
  static_assert(kMaxVkCpuThreads == vk::kMaxCpuThreads);
  device_options.cpu_threads = options.vk_cpu_threads;
  DUET_ASSIGN_OR_RETURN(std::unique_ptr<vk::Device> device, vk::Device::Create(device_options));
  if (options.profile && !device->features().timestamps) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--profile needs compute-queue timestamps, which ", device->info().name, " lacks"));
  }
  std::unique_ptr<VulkanEngine> engine(
      new VulkanEngine(std::move(file), std::move(config), layout, std::move(device)));
  engine->profile_ = options.profile;
  engine->kernels_ = std::make_unique<vk::Kernels>(engine->device_.get());
  engine->ResetCommandList();
  if (engine->cl_ == nullptr) return absl::InternalError("VulkanEngine: no command list");
  engine->prefill_matmul_ = vk::DefaultMatMulConfig(*engine->device_);
  engine->decode_matmul_ = engine->prefill_matmul_;
  engine->decode_matmul_.matvec_max_tokens = INT64_MAX;
  DUET_RETURN_IF_ERROR(engine->UploadWeights());
  DUET_RETURN_IF_ERROR(engine->AllocateKv());
  return engine;
}

void VulkanEngine::ResetList(std::unique_ptr<vk::CommandList>* list, bool profiling) {
  vk::CommandListOptions options;
  options.profiling = profiling;
  absl::StatusOr<std::unique_ptr<vk::CommandList>> cl =
      vk::CommandList::Create(device_.get(), options);
  *list = cl.ok() ? std::move(*cl) : nullptr;
}

absl::StatusOr<vk::Buffer> VulkanEngine::NewBuffer(uint64_t bytes, vk::MemoryKind kind) {
  // Whole 256-byte units: every view a kernel binds may read to a 16-byte boundary.
  return device_->CreateBuffer(RoundUp(std::max<uint64_t>(bytes, 4), 256), kind);
}

// ---------------------------------------------------------------------------------------------
// Weights.

absl::Status VulkanEngine::UploadWeights() {
  DUET_ASSIGN_OR_RETURN(ModelWeights bound, BindWeights(*file_, config_));
  uint64_t total = 0;
  for (const GgufTensorInfo& t : file_->tensors()) total += t.num_bytes;
  ProgressBar progress(absl::StrCat("loading onto ", device_->info().name), total);

  // The layout of a 2-D weight on the device: its GGUF type (BF16 widened to F32, which the
  // kernels read), Q8_0 / Q4_0 rows padded to 16 bytes where the decode kernels want that.
  auto layout = [&](const GgufTensorInfo& t) {
    vk::WeightView w;
    w.rows = t.shape[1];
    w.cols = t.shape[0];
    w.type = t.type == GgmlType::kBF16 ? GgmlType::kF32 : t.type;
    const int64_t packed = GgmlRowBytes(w.type, w.cols);
    const bool quantized = w.type == GgmlType::kQ8_0 || w.type == GgmlType::kQ4_0;
    if (decode_matmul_.aligned_quant_rows && quantized && packed % 16 != 0) {
      w.row_stride = vk::AlignedRowStride(w.type, w.cols);
    }
    return w;
  };
  // Writes t's rows, laid out as `w` says, at the start of `dst`.
  auto upload = [&](const GgufTensorInfo& t, const vk::WeightView& w,
                    vk::BufferView dst) -> absl::Status {
    if (t.type == GgmlType::kBF16) {
      std::vector<float> widened = cpu_ref::DequantizeTensor(t);
      DUET_RETURN_IF_ERROR(device_->Upload(dst.Sub(0, widened.size() * 4), widened.data()));
    } else if (w.row_stride > 0) {
      // Rows padded to 16 bytes (zeros between them).
      const int64_t packed = GgmlRowBytes(w.type, w.cols);
      std::vector<uint8_t> padded(static_cast<size_t>(w.rows * w.row_stride), 0);
      for (int64_t r = 0; r < w.rows; ++r) {
        std::memcpy(padded.data() + r * w.row_stride, t.data + r * packed,
                    static_cast<size_t>(packed));
      }
      DUET_RETURN_IF_ERROR(device_->Upload(dst.Sub(0, padded.size()), padded.data()));
    } else {
      DUET_RETURN_IF_ERROR(device_->Upload(dst.Sub(0, t.num_bytes), t.data));
    }
    progress.Add(t.num_bytes);
    return absl::OkStatus();
  };
  auto matrix = [&](const GgufTensorInfo& t) -> absl::StatusOr<vk::WeightView> {
    vk::WeightView w = layout(t);
    const uint64_t bytes = vk::MatMulWeightBytes(w.type, w.rows, w.cols, w.row_stride);
    DUET_ASSIGN_OR_RETURN(vk::Buffer buffer, NewBuffer(bytes, vk::MemoryKind::kDevice));
    DUET_RETURN_IF_ERROR(upload(t, w, buffer.view()));
    w.data = buffer.view();
    weights_.buffers.push_back(std::move(buffer));
    return w;
  };
  // Weights that a decode step multiplies by the same x (q | k | v, gate | up), uploaded back to
  // back into one buffer so that one matvec reads them all: *whole covers every row, parts[i]
  // its own. Where they cannot share a buffer (types or widths differ, a part would start
  // misaligned, or all of them exceed one binding), each gets its own and *whole stays empty.
  auto fused = [&](absl::Span<const GgufTensorInfo* const> tensors,
                   absl::Span<vk::WeightView* const> parts, vk::WeightView* whole) -> absl::Status {
    const vk::WeightView first = layout(*tensors[0]);
    const int64_t row_bytes =
        first.row_stride > 0 ? first.row_stride : GgmlRowBytes(first.type, first.cols);
    const uint64_t align = vk::MatMulViewAlignment(*device_, decode_matmul_);
    bool fits = true;
    int64_t rows = 0;
    for (const GgufTensorInfo* t : tensors) {
      const vk::WeightView w = layout(*t);
      fits &= w.type == first.type && w.cols == first.cols && w.row_stride == first.row_stride &&
              U64(rows * row_bytes) % align == 0;
      rows += w.rows;
    }
    fits &= U64(rows * row_bytes) <= vk::MaxMatMulBindingBytes(*device_, decode_matmul_);
    if (!fits) {
      for (size_t i = 0; i < tensors.size(); ++i) {
        DUET_ASSIGN_OR_RETURN(*parts[i], matrix(*tensors[i]));
      }
      return absl::OkStatus();
    }
    *whole = first;
    whole->rows = rows;
    const uint64_t bytes = vk::MatMulWeightBytes(first.type, rows, first.cols, first.row_stride);
    DUET_ASSIGN_OR_RETURN(vk::Buffer buffer, NewBuffer(bytes, vk::MemoryKind::kDevice));
    int64_t row0 = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      vk::WeightView w = layout(*tensors[i]);
      const uint64_t offset = U64(row0 * row_bytes);
      w.data = buffer.view(offset, vk::MatMulWeightBytes(w.type, w.rows, w.cols, w.row_stride));
      DUET_RETURN_IF_ERROR(upload(*tensors[i], w, w.data));
      *parts[i] = w;
      row0 += w.rows;
    }
    whole->data = buffer.view(0, bytes);
    weights_.buffers.push_back(std::move(buffer));
    return absl::OkStatus();
  };
  // A small tensor as f32, repeated `copies` times.
  auto vector = [&](const GgufTensorInfo& t, int64_t copies) -> absl::StatusOr<vk::BufferView> {
    std::vector<float> values = cpu_ref::DequantizeTensor(t);
    std::vector<float> repeated;
    repeated.reserve(values.size() * static_cast<size_t>(copies));
    for (int64_t i = 0; i < copies; ++i)
      repeated.insert(repeated.end(), values.begin(), values.end());
    DUET_ASSIGN_OR_RETURN(vk::Buffer buffer,
                          NewBuffer(repeated.size() * 4, vk::MemoryKind::kDevice));
    DUET_RETURN_IF_ERROR(device_->Upload(buffer.view(0, repeated.size() * 4), repeated.data()));
    progress.Add(t.num_bytes);
    vk::BufferView view = buffer.view(0, repeated.size() * 4);
    weights_.buffers.push_back(std::move(buffer));
    return view;
  };

  DUET_ASSIGN_OR_RETURN(weights_.token_embd, matrix(*bound.token_embd));
  if (bound.output == bound.token_embd) {
    weights_.output = weights_.token_embd;
  } else {
    DUET_ASSIGN_OR_RETURN(weights_.output, matrix(*bound.output));
  }
  DUET_ASSIGN_OR_RETURN(weights_.output_norm, vector(*bound.output_norm, 1));
  for (const duet::LayerWeights& l : bound.layers) {
    LayerWeights w;
    const GgufTensorInfo* const qkv[] = {l.attn_q, l.attn_k, l.attn_v};
    DUET_RETURN_IF_ERROR(fused(qkv, {&w.q, &w.k, &w.v}, &w.qkv));
    DUET_ASSIGN_OR_RETURN(w.o, matrix(*l.attn_output));
    const GgufTensorInfo* const gate_up[] = {l.ffn_gate, l.ffn_up};
    DUET_RETURN_IF_ERROR(fused(gate_up, {&w.gate, &w.up}, &w.gate_up));
    DUET_ASSIGN_OR_RETURN(w.down, matrix(*l.ffn_down));
    DUET_ASSIGN_OR_RETURN(w.attn_norm, vector(*l.attn_norm, 1));
    DUET_ASSIGN_OR_RETURN(w.ffn_norm, vector(*l.ffn_norm, 1));
    if (l.attn_q_bias != nullptr) {
      DUET_ASSIGN_OR_RETURN(w.q_bias, vector(*l.attn_q_bias, kBiasRows));
      DUET_ASSIGN_OR_RETURN(w.k_bias, vector(*l.attn_k_bias, kBiasRows));
      DUET_ASSIGN_OR_RETURN(w.v_bias, vector(*l.attn_v_bias, kBiasRows));
    }
    weights_.layers.push_back(w);
  }
  std::vector<float> freqs;
  if (bound.rope_freqs != nullptr) freqs = cpu_ref::DequantizeTensor(*bound.rope_freqs);
  const std::vector<uint32_t> table = vk::MakeRopeTable(config_, freqs);
  DUET_ASSIGN_OR_RETURN(vk::Buffer rope, NewBuffer(table.size() * 4, vk::MemoryKind::kDevice));
  DUET_RETURN_IF_ERROR(device_->Upload(rope.view(0, table.size() * 4), table.data()));
  weights_.rope_table = rope.view();
  weights_.buffers.push_back(std::move(rope));
  progress.Finish();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// KV pool and activations.

absl::Status VulkanEngine::AllocateKv() {
  const bool fp8 = layout_.dtype == kv::CacheDtype::kFp8E4M3;
  for (int64_t layer = 0; layer < layout_.num_layers; ++layer) {
    for (std::vector<vk::Buffer>* data : {&kv_.k_data, &kv_.v_data}) {
      DUET_ASSIGN_OR_RETURN(vk::Buffer b,
                            NewBuffer(U64(layout_.layer_data_bytes()), vk::MemoryKind::kDevice));
      DUET_RETURN_IF_ERROR(cl_->Fill(b.view(), 0));
      data->push_back(std::move(b));
    }
    if (fp8) {
      for (std::vector<vk::Buffer>* scales : {&kv_.k_scales, &kv_.v_scales}) {
        DUET_ASSIGN_OR_RETURN(vk::Buffer b,
                              NewBuffer(U64(layout_.layer_scale_bytes()), vk::MemoryKind::kDevice));
        DUET_RETURN_IF_ERROR(cl_->Fill(b.view(), 0x3f800000u));  // 1.0f, as the CPU store
        scales->push_back(std::move(b));
      }
    }
  }
  if (fp8) {
    DUET_ASSIGN_OR_RETURN(kv_.tail, NewBuffer(U64(layout_.tail_bytes()), vk::MemoryKind::kDevice));
    DUET_RETURN_IF_ERROR(cl_->Fill(kv_.tail.view(), 0));
  }
  return cl_->Submit();
}

vk::KvLayerViews VulkanEngine::CacheViews(int64_t layer) const {
  vk::KvLayerViews views;
  const size_t l = static_cast<size_t>(layer);
  views.k_data = kv_.k_data[l].view();
  views.v_data = kv_.v_data[l].view();
  if (layout_.dtype == kv::CacheDtype::kFp8E4M3) {
    views.k_scales = kv_.k_scales[l].view();
    views.v_scales = kv_.v_scales[l].view();
    views.tail = kv_.tail.view();
  }
  return views;
}

absl::Status VulkanEngine::EnsureActivations(int64_t rows, int64_t logit_rows, uint64_t table_words,
                                             uint64_t decode_scratch_bytes) {
  Activations& a = act_;
  const ModelConfig& c = config_;
  using vk::MemoryKind;
  if (rows > a.rows) {
    const int64_t r = std::max(rows, std::min<int64_t>(2 * a.rows, kMaxPrefillChunk));
    const uint64_t rr = U64(r);
    DUET_ASSIGN_OR_RETURN(a.tokens, NewBuffer(rr * 4, MemoryKind::kUpload));
    DUET_ASSIGN_OR_RETURN(a.positions, NewBuffer(rr * 4, MemoryKind::kUpload));
    DUET_ASSIGN_OR_RETURN(a.x, NewBuffer(rr * U64(c.hidden_dim) * 4, MemoryKind::kDevice));
    DUET_ASSIGN_OR_RETURN(a.h, NewBuffer(rr * U64(c.hidden_dim) * 4, MemoryKind::kDevice));
    DUET_ASSIGN_OR_RETURN(a.q, NewBuffer(rr * U64(c.q_dim()) * 4, MemoryKind::kDevice));
    DUET_ASSIGN_OR_RETURN(a.attn, NewBuffer(rr * U64(c.q_dim()) * 4, MemoryKind::kDevice));
    DUET_ASSIGN_OR_RETURN(a.k_new, NewBuffer(rr * U64(c.kv_dim()) * 4, MemoryKind::kDevice));
    DUET_ASSIGN_OR_RETURN(a.v_new, NewBuffer(rr * U64(c.kv_dim()) * 4, MemoryKind::kDevice));
    DUET_ASSIGN_OR_RETURN(a.gate, NewBuffer(rr * U64(c.ffn_dim) * 4, MemoryKind::kDevice));
    DUET_ASSIGN_OR_RETURN(a.up, NewBuffer(rr * U64(c.ffn_dim) * 4, MemoryKind::kDevice));
    a.rows = r;
  }
  if (logit_rows > a.logit_rows) {
    const uint64_t lr = U64(logit_rows);
    DUET_ASSIGN_OR_RETURN(a.logits, NewBuffer(lr * U64(c.vocab_size) * 4, MemoryKind::kDevice));
    DUET_ASSIGN_OR_RETURN(a.ids, NewBuffer(lr * 4, MemoryKind::kDevice));
    if (!a.logits.host_visible() || !a.ids.host_visible()) {
      DUET_ASSIGN_OR_RETURN(a.readback,
                            NewBuffer(lr * U64(c.vocab_size) * 4, MemoryKind::kReadback));
    }
    a.logit_rows = logit_rows;
  }
  if (table_words > a.table_words) {
    const uint64_t words = std::max(table_words, 2 * a.table_words);
    DUET_ASSIGN_OR_RETURN(a.seq_table, NewBuffer(words * 4, MemoryKind::kUpload));
    a.table_words = words;
  }
  if (decode_scratch_bytes > 0 && decode_scratch_bytes > a.decode_scratch.size()) {
    DUET_ASSIGN_OR_RETURN(
        a.decode_scratch,
        NewBuffer(decode_scratch_bytes + decode_scratch_bytes / 2, MemoryKind::kDevice));
  }
  return absl::OkStatus();
}

absl::StatusOr<VulkanEngine::Stash> VulkanEngine::NewStash(int64_t rows) {
  const uint64_t align =
      std::max<uint64_t>(256, device_->limits().min_storage_buffer_offset_alignment);
  Stash stash;
  stash.stride = RoundUp(U64(rows * config_.kv_dim()) * 4, align);
  const uint64_t bytes = U64(config_.num_layers) * 2 * stash.stride;
  // A free pooled buffer (only the pool holds it) that fits; the smallest such.
  std::shared_ptr<vk::Buffer>* best = nullptr;
  for (std::shared_ptr<vk::Buffer>& b : stash_pool_) {
    if (b.use_count() == 1 && b->size() >= bytes && (best == nullptr || b->size() < (*best)->size())) {
      best = &b;
    }
  }
  if (best != nullptr) {
    stash.buffer = *best;
    return stash;
  }
  // Room for a verify of a few more rows than this one, so a growing draft reuses it.
  DUET_ASSIGN_OR_RETURN(vk::Buffer buffer, NewBuffer(bytes + bytes / 2, vk::MemoryKind::kDevice));
  stash.buffer = std::make_shared<vk::Buffer>(std::move(buffer));
  // Replace the smallest free buffer once the pool is full (a busy one is never dropped here:
  // its holder keeps it alive and it simply leaves the pool).
  constexpr size_t kMaxPooledStashes = 4;
  if (stash_pool_.size() < kMaxPooledStashes) {
    stash_pool_.push_back(stash.buffer);
  } else {
    auto victim = std::min_element(stash_pool_.begin(), stash_pool_.end(),
                                   [](const auto& a, const auto& b) {
                                     const bool fa = a.use_count() == 1, fb = b.use_count() == 1;
                                     return fa != fb ? fa : a->size() < b->size();
                                   });
    *victim = stash.buffer;
  }
  return stash;
}

// ---------------------------------------------------------------------------------------------
// The Engine calls.

absl::StatusOr<std::vector<float>> VulkanEngine::Prefill(const SequenceRef& seq,
                                                         absl::Span<const int32_t> tokens,
                                                         bool all_logits,
                                                         const PrefillObserver* observer) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("Prefill"));
  DUET_RETURN_IF_ERROR(engine_internal::CheckObserver(observer));
  DUET_RETURN_IF_ERROR(engine_internal::CheckTokens(config_, tokens, "Prefill"));
  const int64_t n = static_cast<int64_t>(tokens.size());
  DUET_RETURN_IF_ERROR(engine_internal::CheckSequence(config_, layout_, seq, n, "Prefill"));
  verifies_.Forget(seq);
  std::vector<float> logits;
  for (int64_t done = 0; done < n; done += kMaxPrefillChunk) {
    const int64_t count = std::min(kMaxPrefillChunk, n - done);
    SequenceRef chunk = seq;
    chunk.num_cached = seq.num_cached + done;
    const StepSeq step{chunk, tokens.subspan(static_cast<size_t>(done), static_cast<size_t>(count)),
                       0};
    const bool last = done + count == n;
    const LogitsOut out =
        all_logits ? LogitsOut::kAllRows : (last ? LogitsOut::kLastRow : LogitsOut::kNone);
    std::vector<float> part;
    DUET_RETURN_IF_ERROR(RunStep(StepKind::kPrefill, absl::MakeConstSpan(&step, 1), out, false,
                                 nullptr, &part, nullptr, observer));
    logits.insert(logits.end(), part.begin(), part.end());
  }
  return logits;
}

absl::StatusOr<std::vector<float>> VulkanEngine::DecodeLogits(absl::Span<const DecodeItem> batch,
                                                              bool greedy,
                                                              std::vector<int32_t>* ids) {
  const std::string op = greedy ? "DecodeStepGreedy" : "DecodeStep";
  DUET_RETURN_IF_ERROR(gate_.CheckIdle(op));
  DUET_RETURN_IF_ERROR(engine_internal::CheckBatch(config_, layout_, batch, op));
  std::vector<StepSeq> seqs;
  seqs.reserve(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    verifies_.Forget(batch[i].seq);
    seqs.push_back(
        StepSeq{batch[i].seq, absl::MakeConstSpan(&batch[i].token, 1), static_cast<int64_t>(i)});
  }
  std::vector<float> logits;
  DUET_RETURN_IF_ERROR(
      RunStep(StepKind::kDecode, seqs, LogitsOut::kAllRows, greedy, nullptr, &logits, ids));
  return logits;
}

absl::StatusOr<std::vector<float>> VulkanEngine::DecodeStep(absl::Span<const DecodeItem> batch) {
  return DecodeLogits(batch, /*greedy=*/false, nullptr);
}

absl::StatusOr<std::vector<int32_t>> VulkanEngine::DecodeStepGreedy(
    absl::Span<const DecodeItem> batch) {
  std::vector<int32_t> ids;
  DUET_RETURN_IF_ERROR(DecodeLogits(batch, /*greedy=*/true, &ids).status());
  return ids;
}

absl::StatusOr<std::vector<float>> VulkanEngine::VerifyLogits(absl::Span<const VerifyItem> batch,
                                                              bool greedy,
                                                              std::vector<int32_t>* ids) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("Verify"));
  DUET_RETURN_IF_ERROR(engine_internal::CheckVerifyBatch(config_, layout_, batch, "Verify"));
  std::vector<StepSeq> seqs;
  seqs.reserve(batch.size());
  int64_t rows = 0;
  for (const VerifyItem& item : batch) {
    verifies_.Forget(item.seq);
    seqs.push_back(StepSeq{item.seq, item.tokens, rows});
    rows += static_cast<int64_t>(item.tokens.size());
  }
  DUET_ASSIGN_OR_RETURN(Stash stash, NewStash(rows));
  std::vector<float> logits;
  DUET_RETURN_IF_ERROR(
      RunStep(StepKind::kVerify, seqs, LogitsOut::kAllRows, greedy, &stash, &logits, ids));
  for (const StepSeq& s : seqs) {
    Stash item_stash = stash;
    item_stash.row0 = s.row0;
    verifies_.Put(s.seq, static_cast<int64_t>(s.tokens.size()), std::move(item_stash));
  }
  return logits;
}

absl::StatusOr<std::vector<float>> VulkanEngine::VerifyBatch(absl::Span<const VerifyItem> batch) {
  return VerifyLogits(batch, /*greedy=*/false, nullptr);
}

absl::StatusOr<std::vector<int32_t>> VulkanEngine::VerifyBatchGreedy(
    absl::Span<const VerifyItem> batch) {
  std::vector<int32_t> ids;
  DUET_RETURN_IF_ERROR(VerifyLogits(batch, /*greedy=*/true, &ids).status());
  return ids;
}

absl::Status VulkanEngine::CommitBatch(absl::Span<const CommitItem> batch) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("Commit"));
  DUET_ASSIGN_OR_RETURN(const auto entries, verifies_.FindAll(batch));
  // One queued commit per stash (usually one: the step's VerifyBatch); it runs at the start of
  // the next call that touches the KV.
  const size_t first = queued_commits_.size();
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].accepted == 0) continue;
    const Stash& stash = entries[i]->payload;
    size_t g = first;
    while (g < queued_commits_.size() && queued_commits_[g].stash.buffer != stash.buffer) ++g;
    if (g == queued_commits_.size()) {
      queued_commits_.emplace_back();
      queued_commits_.back().stash = stash;
    }
    QueuedCommit::Seq s;
    s.row0 = stash.row0;
    s.accepted = batch[i].accepted;
    s.num_cached = batch[i].seq.num_cached;
    s.tail_slot = batch[i].seq.tail_slot;
    s.block_table = entries[i]->block_table;
    queued_commits_[g].seqs.push_back(std::move(s));
  }
  for (const CommitItem& item : batch) verifies_.Forget(item.seq);
  return absl::OkStatus();
}

std::string VulkanEngine::ProfileReport() const {
  if (!profile_ || cl_ == nullptr) return "";
  // Layer groups run on two lists: merge their rows by kernel.
  std::vector<vk::KernelTiming> rows = cl_->ProfileReport();
  if (cl_alt_ != nullptr) {
    for (const vk::KernelTiming& t : cl_alt_->ProfileReport()) {
      auto it = std::find_if(rows.begin(), rows.end(),
                             [&](const vk::KernelTiming& r) { return r.name == t.name; });
      if (it == rows.end()) {
        rows.push_back(t);
      } else {
        it->count += t.count;
        it->total_us += t.total_us;
        it->mean_us = it->count > 0 ? it->total_us / static_cast<double>(it->count) : 0.0;
      }
    }
    std::sort(rows.begin(), rows.end(), [](const vk::KernelTiming& a, const vk::KernelTiming& b) {
      return a.total_us != b.total_us ? a.total_us > b.total_us : a.name < b.name;
    });
  }
  double total_us = 0;
  for (const vk::KernelTiming& t : rows) total_us += t.total_us;
  std::string out = absl::StrFormat("%-28s %8s %12s %12s %7s\n", "kernel", "calls", "total ms",
                                    "mean us", "share");
  for (const vk::KernelTiming& t : rows) {
    absl::StrAppendFormat(&out, "%-28s %8d %12.3f %12.1f %6.1f%%\n", t.name, t.count,
                          t.total_us / 1000.0, t.mean_us,
                          total_us > 0 ? 100.0 * t.total_us / total_us : 0.0);
  }
  absl::StrAppendFormat(&out, "%-28s %8s %12.3f\n", "total", "", total_us / 1000.0);
  return out;
}

}  // namespace duet
