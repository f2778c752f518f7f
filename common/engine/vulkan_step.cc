// VulkanEngine: recording and submitting one step (the model forward over a batch of
// sequences) and the commit of a verified speculation.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/engine/vulkan_engine.h"
#include "common/vk/ops_attention.h"
#include "common/vk/ops_elementwise.h"
#include "common/vk/ops_matmul.h"

namespace duet {
namespace {

uint64_t U64(int64_t v) { return static_cast<uint64_t>(v); }
uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

absl::StatusOr<VulkanEngine::PreparedStep> VulkanEngine::PrepareStep(StepKind kind,
                                                                     absl::Span<const StepSeq> seqs,
                                                                     LogitsOut logits_out) {
  // The batch: rows of every sequence back to back.
  PreparedStep p;
  p.attn.resize(seqs.size());
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const StepSeq& s = seqs[i];
    p.attn[i].q_offset = static_cast<int64_t>(tokens.size());
    p.attn[i].num_new = static_cast<int64_t>(s.tokens.size());
    p.attn[i].num_cached = s.seq.num_cached;
    p.attn[i].tail_slot = s.seq.tail_slot;
    p.attn[i].block_table = s.seq.block_table;
    for (size_t j = 0; j < s.tokens.size(); ++j) {
      tokens.push_back(s.tokens[j]);
      positions.push_back(static_cast<int32_t>(s.seq.num_cached + static_cast<int64_t>(j)));
    }
  }
  p.rows = static_cast<int64_t>(tokens.size());
  const std::vector<uint32_t> table = vk::EncodeSequenceTable(p.attn);
  p.table_words = table.size();
  p.logit_rows =
      logits_out == LogitsOut::kAllRows ? p.rows : (logits_out == LogitsOut::kLastRow ? 1 : 0);
  uint64_t scratch_bytes = 0;
  if (kind != StepKind::kPrefill) {
    vk::AttnStep probe;
    probe.layout = layout_;
    probe.seqs = p.attn;
    scratch_bytes = vk::PagedAttnDecodeScratchBytes(probe, config_.num_heads, decode_attn_);
  }
  DUET_RETURN_IF_ERROR(
      EnsureActivations(p.rows, std::max<int64_t>(p.logit_rows, 1), table.size(), scratch_bytes));
  std::memcpy(act_.tokens.mapped(), tokens.data(), tokens.size() * 4);
  std::memcpy(act_.positions.mapped(), positions.data(), positions.size() * 4);
  std::memcpy(act_.seq_table.mapped(), table.data(), table.size() * 4);
  return p;
}

absl::Status VulkanEngine::RunStep(StepKind kind, absl::Span<const StepSeq> seqs,
                                   LogitsOut logits_out, bool greedy, const Stash* stash,
                                   std::vector<float>* floats, std::vector<int32_t>* ids,
                                   const PrefillObserver* observer) {
  if (cl_ == nullptr) ResetCommandList();
  if (cl_ == nullptr) return absl::InternalError("VulkanEngine: cannot create a command list");
  if (observer != nullptr) DUET_RETURN_IF_ERROR(FlushQueuedCommits());
  DUET_ASSIGN_OR_RETURN(const PreparedStep step, PrepareStep(kind, seqs, logits_out));
  if (observer == nullptr) {
    // Queued commits first, in the same submission (the list orders every dispatch after the
    // previous one).
    absl::Status status = RecordQueuedCommits(*cl_);
    if (status.ok()) {
      status = RecordStep(*cl_, kind, step, 0, config_.num_layers, logits_out, greedy, stash);
    }
    if (!status.ok()) {
      ResetCommandList();
      return status;
    }
    DUET_RETURN_IF_ERROR(cl_->Submit());
    queued_commits_.clear();
  } else {
    const StepSeq& s = seqs[0];  // a prefill: one sequence
    DUET_RETURN_IF_ERROR(RunLayerGroups(step, logits_out, *observer,
                                        s.seq.num_cached + static_cast<int64_t>(s.tokens.size())));
  }
  ReadResults(step, greedy, floats, ids);
  return absl::OkStatus();
}

absl::Status VulkanEngine::RunLayerGroups(const PreparedStep& step, LogitsOut logits_out,
                                          const PrefillObserver& observer, int64_t num_tokens) {
  if (cl_alt_ == nullptr) ResetList(&cl_alt_, profile_);
  if (cl_alt_ == nullptr) return absl::InternalError("VulkanEngine: cannot create a command list");
  if (order_marker_.size() == 0) {
    DUET_ASSIGN_OR_RETURN(order_marker_, NewBuffer(8, vk::MemoryKind::kDevice));
  }
  std::unique_ptr<vk::CommandList>* const lists[2] = {&cl_, &cl_alt_};
  const int64_t num_layers = config_.num_layers;
  const int64_t per_group = observer.layers_per_group;
  const int64_t num_groups = (num_layers + per_group - 1) / per_group;

  auto submit_group = [&](int64_t k) -> absl::Status {
    std::unique_ptr<vk::CommandList>& list = *lists[k % 2];
    if (list == nullptr) ResetList(&list, profile_);
    if (list == nullptr) return absl::InternalError("VulkanEngine: cannot create a command list");
    const int64_t begin = k * per_group;
    const int64_t end = std::min(num_layers, begin + per_group);
    // The no-op fill takes the barrier-less first place, so the group's real commands follow
    // a barrier that orders them after the previous group (submitted earlier, still running).
    // Each list fills its own word: two fills never race.
    absl::Status status =
        k == 0 ? absl::OkStatus() : list->Fill(order_marker_.view(4 * U64(k % 2), 4), 0);
    if (status.ok()) {
      status = RecordStep(*list, StepKind::kPrefill, step, begin, end, logits_out,
                          /*greedy=*/false, /*stash=*/nullptr);
    }
    if (!status.ok()) {
      ResetList(&list, profile_);
      return status;
    }
    return list->SubmitAsync();
  };
  // Waits for both lists (nothing may stay in flight when a call returns).
  auto wait_all = [&]() {
    for (std::unique_ptr<vk::CommandList>* list : lists) {
      if (*list != nullptr) (void)(*list)->Wait();
    }
  };

  DUET_RETURN_IF_ERROR(submit_group(0));
  for (int64_t k = 0; k < num_groups; ++k) {
    absl::Status status = k + 1 < num_groups ? submit_group(k + 1) : absl::OkStatus();
    const absl::Status waited = (*lists[k % 2])->Wait();
    if (status.ok()) status = waited;
    if (status.ok()) {
      const PrefillProgress progress{std::min(num_layers, (k + 1) * per_group), num_layers,
                                     num_tokens};
      status = gate_.Notify(observer, progress);
    }
    if (!status.ok()) {
      wait_all();
      return status;
    }
  }
  return absl::OkStatus();
}

void VulkanEngine::ReadResults(const PreparedStep& step, bool greedy, std::vector<float>* floats,
                               std::vector<int32_t>* ids) const {
  if (step.logit_rows == 0) return;
  if (greedy) {
    const vk::Buffer& src = act_.ids.host_visible() ? act_.ids : act_.readback;
    ids->resize(static_cast<size_t>(step.logit_rows));
    std::memcpy(ids->data(), src.mapped(), ids->size() * 4);
  } else {
    const vk::Buffer& src = act_.logits.host_visible() ? act_.logits : act_.readback;
    floats->resize(static_cast<size_t>(step.logit_rows * config_.vocab_size));
    std::memcpy(floats->data(), src.mapped(), floats->size() * 4);
  }
}

absl::Status VulkanEngine::RecordStep(vk::CommandList& cl, StepKind kind,
                                      const PreparedStep& prepared, int64_t layer_begin,
                                      int64_t layer_end, LogitsOut logits_out, bool greedy,
                                      const Stash* stash) {
  const absl::Span<const vk::AttnSequence> attn_seqs = prepared.attn;
  const int64_t rows = prepared.rows;
  const uint64_t table_words = prepared.table_words;
  const vk::Kernels& kernels = *kernels_;
  const ModelConfig& c = config_;
  const Activations& a = act_;
  const vk::MatMulConfig* mm = kind == StepKind::kPrefill ? &prefill_matmul_ : &decode_matmul_;
  const uint64_t kv_bytes = U64(rows * c.kv_dim()) * 4;
  const vk::BufferView table = a.seq_table.view(0, table_words * 4);
  // Decode and verify steps run the matvec, which fuses q | k | v and gate | up + SwiGLU.
  const bool decode_shaped = kind != StepKind::kPrefill;
  const vk::MatMulLayout accumulate{.epilogue = vk::MatMulEpilogue::kAccumulate};
  // FP8 seals only blocks the step completes; most decode steps complete none (a dispatch
  // saved per layer, which is most of a small model's cost on a CPU device).
  bool seals = false;
  for (const vk::AttnSequence& s : attn_seqs) {
    const int64_t bs = layout_.block_size;
    seals |= (s.num_cached / bs + 1) * bs <= s.num_cached + s.num_new;
  }

  // Adds a bias [dim] to every row of y [rows, dim], kBiasRows rows per dispatch.
  auto add_bias = [&](vk::BufferView y, vk::BufferView bias, int64_t dim) -> absl::Status {
    for (int64_t r0 = 0; r0 < rows; r0 += kBiasRows) {
      const int64_t count = std::min(kBiasRows, rows - r0);
      const vk::BufferView part = y.Sub(U64(r0 * dim) * 4, U64(count * dim) * 4);
      DUET_RETURN_IF_ERROR(
          vk::RecordAdd(cl, kernels, part, bias.Sub(0, part.size), part, count * dim));
    }
    return absl::OkStatus();
  };

  if (layer_begin == 0) {
    DUET_RETURN_IF_ERROR(vk::RecordGetRows(cl, kernels, weights_.token_embd.type,
                                           weights_.token_embd.data, c.vocab_size, c.hidden_dim,
                                           a.tokens.view(), a.x.view(), rows,
                                           weights_.token_embd.row_stride));
  }
  for (int64_t layer = layer_begin; layer < layer_end; ++layer) {
    const LayerWeights& w = weights_.layers[static_cast<size_t>(layer)];
    // K/V rows: the step's scratch, or the Verify's stash that Commit reads later.
    const vk::BufferView k_new =
        stash != nullptr ? stash->buffer->view(stash->Offset(layer, 0), kv_bytes) : a.k_new.view();
    const vk::BufferView v_new =
        stash != nullptr ? stash->buffer->view(stash->Offset(layer, 1), kv_bytes) : a.v_new.view();

    DUET_RETURN_IF_ERROR(vk::RecordRmsNorm(cl, kernels, a.x.view(), w.attn_norm, a.h.view(), rows,
                                           c.hidden_dim, c.rms_norm_eps));
    if (decode_shaped && !w.qkv.data.empty()) {
      const vk::MatMulOutput qkv[] = {
          {a.q.view(), c.q_dim()}, {k_new, c.kv_dim()}, {v_new, c.kv_dim()}};
      DUET_RETURN_IF_ERROR(vk::RecordMatVecSplit(cl, kernels, w.qkv, a.h.view(), qkv, rows, mm));
    } else {
      DUET_RETURN_IF_ERROR(
          vk::RecordMatMul(cl, kernels, w.q, a.h.view(), a.q.view(), rows, {}, mm));
      DUET_RETURN_IF_ERROR(vk::RecordMatMul(cl, kernels, w.k, a.h.view(), k_new, rows, {}, mm));
      DUET_RETURN_IF_ERROR(vk::RecordMatMul(cl, kernels, w.v, a.h.view(), v_new, rows, {}, mm));
    }
    if (!w.q_bias.empty()) {
      DUET_RETURN_IF_ERROR(add_bias(a.q.view(), w.q_bias, c.q_dim()));
      DUET_RETURN_IF_ERROR(add_bias(k_new, w.k_bias, c.kv_dim()));
      DUET_RETURN_IF_ERROR(add_bias(v_new, w.v_bias, c.kv_dim()));
    }
    vk::RopeShape rope;
    rope.num_tokens = rows;
    rope.num_heads = c.num_heads;
    rope.head_dim = c.head_dim;
    rope.rope_dim = c.rope_dim;
    rope.layout = c.rope_layout;
    rope.num_heads2 = c.num_kv_heads;  // k, in the same dispatch
    DUET_RETURN_IF_ERROR(vk::RecordRope(cl, kernels, a.q.view(), a.positions.view(),
                                        weights_.rope_table, rope, k_new));

    vk::AttnStep step;
    step.layout = layout_;
    step.layer = layer;
    step.cache = CacheViews(layer);
    step.seqs = attn_seqs;
    step.seq_table = table;
    step.k_new = k_new;
    step.v_new = v_new;
    if (seals) DUET_RETURN_IF_ERROR(vk::RecordKvSeal(cl, kernels, step));
    if (kind == StepKind::kPrefill) {
      DUET_RETURN_IF_ERROR(
          vk::RecordFlashAttnPrefill(cl, kernels, step, c.num_heads, a.q.view(), a.attn.view()));
    } else {
      DUET_RETURN_IF_ERROR(vk::RecordPagedAttnDecode(cl, kernels, step, c.num_heads, a.q.view(),
                                                     a.decode_scratch.view(), a.attn.view(),
                                                     decode_attn_));
    }
    if (kind != StepKind::kVerify) DUET_RETURN_IF_ERROR(vk::RecordKvCommit(cl, kernels, step));

    // The residual adds are the epilogues of the o and down projections (x += ...).
    DUET_RETURN_IF_ERROR(
        vk::RecordMatMul(cl, kernels, w.o, a.attn.view(), a.x.view(), rows, accumulate, mm));
    DUET_RETURN_IF_ERROR(vk::RecordRmsNorm(cl, kernels, a.x.view(), w.ffn_norm, a.h.view(), rows,
                                           c.hidden_dim, c.rms_norm_eps));
    if (decode_shaped && !w.gate_up.data.empty()) {
      DUET_RETURN_IF_ERROR(vk::RecordMatMul(cl, kernels, w.gate_up, a.h.view(), a.gate.view(), rows,
                                            {.epilogue = vk::MatMulEpilogue::kSwiGlu}, mm));
    } else {
      DUET_RETURN_IF_ERROR(
          vk::RecordMatMul(cl, kernels, w.gate, a.h.view(), a.gate.view(), rows, {}, mm));
      DUET_RETURN_IF_ERROR(
          vk::RecordMatMul(cl, kernels, w.up, a.h.view(), a.up.view(), rows, {}, mm));
      DUET_RETURN_IF_ERROR(vk::RecordSwiGlu(cl, kernels, a.gate.view(), a.up.view(), a.gate.view(),
                                            rows * c.ffn_dim));
    }
    DUET_RETURN_IF_ERROR(
        vk::RecordMatMul(cl, kernels, w.down, a.gate.view(), a.x.view(), rows, accumulate, mm));
  }

  if (layer_end < c.num_layers || logits_out == LogitsOut::kNone) return absl::OkStatus();
  const uint64_t row_bytes = U64(c.hidden_dim) * 4;
  int64_t logit_rows = rows;
  if (logits_out == LogitsOut::kLastRow) {
    // The last row alone, copied to row 0 of h (copies need no alignment; views do).
    DUET_RETURN_IF_ERROR(
        cl.Copy(a.x.view(U64(rows - 1) * row_bytes, row_bytes), a.h.view(0, row_bytes)));
    DUET_RETURN_IF_ERROR(vk::RecordRmsNorm(cl, kernels, a.h.view(), weights_.output_norm,
                                           a.h.view(), 1, c.hidden_dim, c.rms_norm_eps));
    logit_rows = 1;
  } else {
    DUET_RETURN_IF_ERROR(vk::RecordRmsNorm(cl, kernels, a.x.view(), weights_.output_norm,
                                           a.h.view(), rows, c.hidden_dim, c.rms_norm_eps));
  }
  DUET_RETURN_IF_ERROR(vk::RecordMatMul(cl, kernels, weights_.output, a.h.view(), a.logits.view(),
                                        logit_rows, {}, mm));
  if (greedy) {
    DUET_RETURN_IF_ERROR(
        vk::RecordArgmax(cl, kernels, a.logits.view(), logit_rows, c.vocab_size, a.ids.view()));
    if (!a.ids.host_visible()) {
      const uint64_t bytes = U64(logit_rows) * 4;
      DUET_RETURN_IF_ERROR(cl.Copy(a.ids.view(0, bytes), a.readback.view(0, bytes)));
    }
  } else if (!a.logits.host_visible()) {
    const uint64_t bytes = U64(logit_rows * c.vocab_size) * 4;
    DUET_RETURN_IF_ERROR(cl.Copy(a.logits.view(0, bytes), a.readback.view(0, bytes)));
  }
  return absl::OkStatus();
}

absl::Status VulkanEngine::RecordQueuedCommits(vk::CommandList& cl) {
  if (queued_commits_.empty()) return absl::OkStatus();
  const uint64_t align = device_->limits().min_storage_buffer_offset_alignment;
  std::vector<std::vector<vk::AttnSequence>> seqs(queued_commits_.size());
  std::vector<std::vector<uint32_t>> tables(queued_commits_.size());
  std::vector<uint64_t> offsets(queued_commits_.size());
  uint64_t bytes = 0;
  for (size_t c = 0; c < queued_commits_.size(); ++c) {
    for (const QueuedCommit::Seq& q : queued_commits_[c].seqs) {
      vk::AttnSequence s;
      s.q_offset = q.row0;
      s.num_new = q.accepted;
      s.num_cached = q.num_cached;
      s.tail_slot = q.tail_slot;
      s.block_table = q.block_table;
      seqs[c].push_back(s);
    }
    tables[c] = vk::EncodeSequenceTable(seqs[c]);
    offsets[c] = bytes;
    bytes = RoundUp(bytes + U64(static_cast<int64_t>(tables[c].size())) * 4, align);
  }
  if (bytes > commit_tables_.size()) {
    DUET_ASSIGN_OR_RETURN(commit_tables_, NewBuffer(2 * bytes, vk::MemoryKind::kUpload));
  }
  for (size_t c = 0; c < queued_commits_.size(); ++c) {
    const uint64_t table_bytes = U64(static_cast<int64_t>(tables[c].size())) * 4;
    std::memcpy(static_cast<uint8_t*>(commit_tables_.mapped()) + offsets[c], tables[c].data(),
                table_bytes);
    const Stash& stash = queued_commits_[c].stash;
    for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
      vk::AttnStep step;
      step.layout = layout_;
      step.layer = layer;
      step.cache = CacheViews(layer);
      step.seqs = seqs[c];
      step.seq_table = commit_tables_.view(offsets[c], table_bytes);
      step.k_new = stash.buffer->view(stash.Offset(layer, 0), stash.stride);
      step.v_new = stash.buffer->view(stash.Offset(layer, 1), stash.stride);
      DUET_RETURN_IF_ERROR(vk::RecordKvCommit(cl, *kernels_, step));
    }
  }
  return absl::OkStatus();
}

absl::Status VulkanEngine::FlushQueuedCommits() {
  if (queued_commits_.empty()) return absl::OkStatus();
  if (cl_ == nullptr) ResetCommandList();
  if (cl_ == nullptr) return absl::InternalError("VulkanEngine: cannot create a command list");
  if (absl::Status status = RecordQueuedCommits(*cl_); !status.ok()) {
    ResetCommandList();
    return status;
  }
  DUET_RETURN_IF_ERROR(cl_->Submit());
  queued_commits_.clear();
  return absl::OkStatus();
}

}  // namespace duet
