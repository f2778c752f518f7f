#include "common/engine/cpu_engine.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/model/cpu_forward.h"
#include "common/model/quant.h"
#include "common/model/sampling.h"

namespace duet {
namespace {

const uint8_t* RowPointer(const GgufTensorInfo& tensor, int64_t row) {
  return tensor.data + row * GgmlRowBytes(tensor.type, tensor.shape[0]);
}

void AddInPlace(const std::vector<float>& bias, float* x) {
  for (size_t i = 0; i < bias.size(); ++i) x[i] += bias[i];
}

}  // namespace

CpuEngine::CpuEngine(std::shared_ptr<const GgufFile> file, ModelConfig config, ModelWeights weights,
                     kv::PagedKvCache cache)
    : file_(std::move(file)),
      config_(std::move(config)),
      weights_(std::move(weights)),
      cache_(std::move(cache)),
      small_(cpu_ref::DecodeSmallWeights(weights_)),
      verifies_(cache_.layout()) {}

absl::StatusOr<std::unique_ptr<CpuEngine>> CpuEngine::Create(std::shared_ptr<const GgufFile> file,
                                                             const EngineOptions& options) {
  if (file == nullptr) return absl::InvalidArgumentError("CpuEngine: null GGUF file");
  DUET_ASSIGN_OR_RETURN(ModelConfig config, ModelConfigFromGguf(*file));
  DUET_ASSIGN_OR_RETURN(ModelWeights weights, BindWeights(*file, config));
  DUET_ASSIGN_OR_RETURN(kv::KvLayout layout, engine_internal::MakeKvLayout(config, options));
  DUET_ASSIGN_OR_RETURN(kv::PagedKvCache cache, kv::PagedKvCache::Create(layout));
  return std::unique_ptr<CpuEngine>(
      new CpuEngine(std::move(file), std::move(config), std::move(weights), std::move(cache)));
}

absl::Status CpuEngine::RunLayer(int64_t layer, const kv::SequenceView& view, int64_t n, float* x,
                                 bool commit, PendingKv* pending) {
  const ModelConfig& c = config_;
  const LayerWeights& w = weights_.layers[static_cast<size_t>(layer)];
  const cpu_ref::SmallWeights::Layer& lv = small_.layers[static_cast<size_t>(layer)];
  const int64_t hidden = c.hidden_dim;

  std::vector<float> h(static_cast<size_t>(hidden));            // [hidden]
  std::vector<float> q(static_cast<size_t>(n * c.q_dim()));     // [n, q_dim]
  std::vector<float> k(static_cast<size_t>(n * c.kv_dim()));    // [n, kv_dim]
  std::vector<float> v(static_cast<size_t>(n * c.kv_dim()));    // [n, kv_dim]
  std::vector<float> attn(static_cast<size_t>(n * c.q_dim()));  // [n, q_dim]
  std::vector<float> delta(static_cast<size_t>(hidden));        // [hidden]
  std::vector<float> gate(static_cast<size_t>(c.ffn_dim));      // [ffn]
  std::vector<float> up(static_cast<size_t>(c.ffn_dim));        // [ffn]

  // The same ops in the same order as CpuModel::RunLayer.
  for (int64_t t = 0; t < n; ++t) {
    const int64_t position = view.num_cached + t;
    float* qt = q.data() + t * c.q_dim();
    float* kt = k.data() + t * c.kv_dim();
    float* vt = v.data() + t * c.kv_dim();
    cpu_ref::RmsNorm(x + t * hidden, lv.attn_norm.data(), hidden, c.rms_norm_eps, h.data());
    cpu_ref::MatVec(*w.attn_q, h.data(), qt);
    cpu_ref::MatVec(*w.attn_k, h.data(), kt);
    cpu_ref::MatVec(*w.attn_v, h.data(), vt);
    AddInPlace(lv.q_bias, qt);
    AddInPlace(lv.k_bias, kt);
    AddInPlace(lv.v_bias, vt);
    cpu_ref::ApplyRope(c, small_.rope_freqs, position, c.num_heads, qt);
    cpu_ref::ApplyRope(c, small_.rope_freqs, position, c.num_kv_heads, kt);
  }

  DUET_RETURN_IF_ERROR(cache_.SealCompleted(layer, view, k.data(), v.data(), n));
  DUET_RETURN_IF_ERROR(
      cache_.Attention(layer, view, q.data(), c.num_heads, k.data(), v.data(), n, attn.data()));
  if (commit) DUET_RETURN_IF_ERROR(cache_.Commit(layer, view, k.data(), v.data(), n));

  for (int64_t t = 0; t < n; ++t) {
    float* xt = x + t * hidden;
    cpu_ref::MatVec(*w.attn_output, attn.data() + t * c.q_dim(), delta.data());
    for (int64_t i = 0; i < hidden; ++i) xt[i] += delta[static_cast<size_t>(i)];

    cpu_ref::RmsNorm(xt, lv.ffn_norm.data(), hidden, c.rms_norm_eps, h.data());
    cpu_ref::MatVec(*w.ffn_gate, h.data(), gate.data());
    cpu_ref::MatVec(*w.ffn_up, h.data(), up.data());
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = cpu_ref::Silu(gate[i]) * up[i];
    cpu_ref::MatVec(*w.ffn_down, gate.data(), delta.data());
    for (int64_t i = 0; i < hidden; ++i) xt[i] += delta[static_cast<size_t>(i)];
  }
  if (pending != nullptr) {
    pending->k[static_cast<size_t>(layer)] = std::move(k);
    pending->v[static_cast<size_t>(layer)] = std::move(v);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> CpuEngine::Run(const SequenceRef& seq,
                                                  absl::Span<const int32_t> tokens, bool all_logits,
                                                  bool commit, PendingKv* pending,
                                                  const PrefillObserver* observer) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t hidden = c.hidden_dim;
  const kv::SequenceView view{seq.block_table, seq.num_cached, seq.tail_slot};
  if (pending != nullptr) {
    pending->k.assign(static_cast<size_t>(c.num_layers), {});
    pending->v.assign(static_cast<size_t>(c.num_layers), {});
  }
  std::vector<float> x(static_cast<size_t>(n * hidden));  // [n, hidden]
  for (int64_t t = 0; t < n; ++t) {
    DequantizeRow(weights_.token_embd->type, RowPointer(*weights_.token_embd, tokens[t]),
                  x.data() + t * hidden, hidden);
  }
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    DUET_RETURN_IF_ERROR(RunLayer(layer, view, n, x.data(), commit, pending));
    const int64_t done = layer + 1;
    if (observer != nullptr && (done % observer->layers_per_group == 0 || done == c.num_layers)) {
      DUET_RETURN_IF_ERROR(
          gate_.Notify(*observer, PrefillProgress{done, c.num_layers, seq.num_cached + n}));
    }
  }
  const int64_t first = all_logits ? 0 : n - 1;
  std::vector<float> logits(static_cast<size_t>((n - first) * c.vocab_size));
  std::vector<float> h(static_cast<size_t>(hidden));
  for (int64_t t = first; t < n; ++t) {
    cpu_ref::RmsNorm(x.data() + t * hidden, small_.output_norm.data(), hidden, c.rms_norm_eps,
                     h.data());
    cpu_ref::MatVec(*weights_.output, h.data(), logits.data() + (t - first) * c.vocab_size);
  }
  return logits;
}

absl::StatusOr<std::vector<float>> CpuEngine::Prefill(const SequenceRef& seq,
                                                      absl::Span<const int32_t> tokens,
                                                      bool all_logits,
                                                      const PrefillObserver* observer) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("Prefill"));
  DUET_RETURN_IF_ERROR(engine_internal::CheckObserver(observer));
  DUET_RETURN_IF_ERROR(engine_internal::CheckTokens(config_, tokens, "Prefill"));
  DUET_RETURN_IF_ERROR(engine_internal::CheckSequence(
      config_, kv_layout(), seq, static_cast<int64_t>(tokens.size()), "Prefill"));
  verifies_.Forget(seq);
  return Run(seq, tokens, all_logits, /*commit=*/true, nullptr, observer);
}

absl::StatusOr<std::vector<float>> CpuEngine::DecodeStep(absl::Span<const DecodeItem> batch) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("DecodeStep"));
  DUET_RETURN_IF_ERROR(engine_internal::CheckBatch(config_, kv_layout(), batch, "DecodeStep"));
  std::vector<float> logits;
  logits.reserve(batch.size() * static_cast<size_t>(config_.vocab_size));
  for (const DecodeItem& item : batch) {
    verifies_.Forget(item.seq);
    DUET_ASSIGN_OR_RETURN(std::vector<float> row,
                          Run(item.seq, absl::MakeConstSpan(&item.token, 1),
                              /*all_logits=*/false, /*commit=*/true, nullptr));
    logits.insert(logits.end(), row.begin(), row.end());
  }
  return logits;
}

absl::StatusOr<std::vector<int32_t>> CpuEngine::DecodeStepGreedy(
    absl::Span<const DecodeItem> batch) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("DecodeStepGreedy"));
  DUET_ASSIGN_OR_RETURN(std::vector<float> logits, DecodeStep(batch));
  std::vector<int32_t> ids(batch.size());
  const size_t vocab = static_cast<size_t>(config_.vocab_size);
  for (size_t i = 0; i < batch.size(); ++i) {
    ids[i] = ArgMax(absl::MakeConstSpan(logits.data() + i * vocab, vocab));
  }
  return ids;
}

absl::StatusOr<std::vector<float>> CpuEngine::VerifyBatch(absl::Span<const VerifyItem> batch) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("Verify"));
  DUET_RETURN_IF_ERROR(engine_internal::CheckVerifyBatch(config_, kv_layout(), batch, "Verify"));
  std::vector<float> logits;
  for (const VerifyItem& item : batch) {
    verifies_.Forget(item.seq);
    PendingKv pending;
    DUET_ASSIGN_OR_RETURN(std::vector<float> rows,
                          Run(item.seq, item.tokens, /*all_logits=*/true, /*commit=*/false,
                              &pending));
    verifies_.Put(item.seq, static_cast<int64_t>(item.tokens.size()), std::move(pending));
    logits.insert(logits.end(), rows.begin(), rows.end());
  }
  return logits;
}

absl::StatusOr<std::vector<int32_t>> CpuEngine::VerifyBatchGreedy(
    absl::Span<const VerifyItem> batch) {
  DUET_ASSIGN_OR_RETURN(std::vector<float> logits, VerifyBatch(batch));
  const size_t vocab = static_cast<size_t>(config_.vocab_size);
  std::vector<int32_t> ids(logits.size() / vocab);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = ArgMax(absl::MakeConstSpan(logits.data() + i * vocab, vocab));
  }
  return ids;
}

absl::Status CpuEngine::CommitBatch(absl::Span<const CommitItem> batch) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("Commit"));
  DUET_ASSIGN_OR_RETURN(const auto entries, verifies_.FindAll(batch));
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceRef& seq = batch[i].seq;
    const kv::SequenceView view{seq.block_table, seq.num_cached, seq.tail_slot};
    if (batch[i].accepted == 0) continue;
    for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
      DUET_RETURN_IF_ERROR(cache_.Commit(layer, view,
                                         entries[i]->payload.k[static_cast<size_t>(layer)].data(),
                                         entries[i]->payload.v[static_cast<size_t>(layer)].data(),
                                         batch[i].accepted));
    }
  }
  for (const CommitItem& item : batch) verifies_.Forget(item.seq);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> CpuEngine::ExportKv(const SequenceRef& seq, int64_t num_tokens,
                                                         const kv::KvRect& rect) {
  DUET_RETURN_IF_ERROR(gate_.CheckExport(num_tokens, rect));
  return kv::ExportRect(cache_, seq.block_table, seq.tail_slot, num_tokens, rect);
}

absl::Status CpuEngine::ImportKv(const SequenceRef& seq, int64_t num_tokens, const kv::KvRect& rect,
                                 absl::Span<const uint8_t> payload) {
  DUET_RETURN_IF_ERROR(gate_.CheckIdle("ImportKv"));
  DUET_RETURN_IF_ERROR(
      kv::ImportRect(&cache_, seq.block_table, seq.tail_slot, num_tokens, rect, payload));
  verifies_.ForgetBlocks(
      seq.block_table.subspan(static_cast<size_t>(rect.block_begin),
                              static_cast<size_t>(rect.block_end - rect.block_begin)));
  return absl::OkStatus();
}

}  // namespace duet
