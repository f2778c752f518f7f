#include "common/engine/engine.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/engine/cpu_engine.h"
#include "common/engine/vulkan_engine.h"

namespace duet {
namespace {

// Speculative verification of 2..max_verify_rows rows of one sequence -- the attention tile
// follows a sequence's row count, the matrix kernels the step's -- with both readbacks, then
// one commit: a fresh prefill of `tokens` into `table` (capacity positions), then the verify
// steps after it.
absl::Status WarmUpVerify(Engine& engine, absl::Span<const int32_t> table, int32_t tail_slot,
                          int64_t capacity, absl::Span<const int32_t> tokens,
                          int64_t max_verify_rows) {
  const int64_t size = static_cast<int64_t>(tokens.size());
  const int64_t cached = std::min(size - 1, std::max<int64_t>(1, capacity - max_verify_rows));
  const int64_t max_rows = std::min({max_verify_rows, capacity - cached, size});
  if (max_rows < 2) return absl::OkStatus();
  DUET_RETURN_IF_ERROR(
      engine.Prefill({table, 0, tail_slot}, tokens.first(static_cast<size_t>(cached))).status());
  const SequenceRef seq{table, cached, tail_slot};
  const absl::Span<const int32_t> drafts = tokens.first(static_cast<size_t>(max_rows));
  for (int64_t rows = 2; rows <= max_rows; ++rows) {
    const VerifyItem item{seq, drafts.first(static_cast<size_t>(rows))};
    DUET_RETURN_IF_ERROR(engine.VerifyBatchGreedy({&item, 1}).status());
  }
  const VerifyItem item{seq, drafts};
  DUET_RETURN_IF_ERROR(engine.VerifyBatch({&item, 1}).status());
  const CommitItem commit{seq, max_rows};
  return engine.CommitBatch({&commit, 1});
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(const std::string& backend,
                                                     std::shared_ptr<const GgufFile> file,
                                                     const EngineOptions& options) {
  if (backend == "cpu") {
    absl::StatusOr<std::unique_ptr<CpuEngine>> engine = CpuEngine::Create(std::move(file), options);
    if (!engine.ok()) return engine.status();
    return std::unique_ptr<Engine>(std::move(*engine));
  }
  if (backend == "vulkan") {
    absl::StatusOr<std::unique_ptr<VulkanEngine>> engine =
        VulkanEngine::Create(std::move(file), options);
    if (!engine.ok()) return engine.status();
    return std::unique_ptr<Engine>(std::move(*engine));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("backend '", backend, "' is not available (available: vulkan, cpu)"));
}

absl::Status WarmUp(Engine& engine, int64_t max_verify_rows) {
  const kv::KvLayout& layout = engine.kv_layout();
  const int64_t block_size = layout.block_size;
  const int64_t vocab = engine.config().vocab_size;
  const bool fp8 = layout.dtype == kv::CacheDtype::kFp8E4M3;
  // Sequence A: a multi-token prompt, then two decode steps; B: one token, then one step.
  int64_t prompt = std::min<int64_t>(64, engine.config().context_length - 3);
  int64_t blocks = (prompt + 2 + block_size - 1) / block_size;
  if (2 * blocks > layout.num_blocks) {
    blocks = layout.num_blocks / 2;
    prompt = blocks * block_size - 2;
  }
  if (prompt < 2 || (fp8 && layout.num_tail_slots < 1)) return absl::OkStatus();  // too small
  std::vector<int32_t> table_a, table_b;
  for (int64_t b = 0; b < blocks; ++b) {
    table_a.push_back(static_cast<int32_t>(b));
    table_b.push_back(static_cast<int32_t>(blocks + b));
  }
  const int32_t slot_a = fp8 ? 0 : -1, slot_b = fp8 ? 1 : -1;
  std::vector<int32_t> tokens(static_cast<size_t>(prompt));
  for (int64_t i = 0; i < prompt; ++i) {
    tokens[static_cast<size_t>(i)] = static_cast<int32_t>((7 * i + 1) % vocab);
  }
  // One sequence is enough for the verify steps; the rest needs two.
  if (max_verify_rows >= 2) {
    DUET_RETURN_IF_ERROR(
        WarmUpVerify(engine, table_a, slot_a, blocks * block_size, tokens, max_verify_rows));
  }
  if (fp8 && layout.num_tail_slots < 2) return absl::OkStatus();

  PrefillObserver observer;
  observer.layers_per_group = 1;
  observer.on_layers_done = [](const PrefillProgress&) { return absl::OkStatus(); };
  // Chunk lengths in steps of 4 below 32 too: matrix kernels size their token tiles to the
  // chunk (a different pipeline per multiple of 4 below a full tile). Each rewrites A from 0.
  for (int64_t n : {12, 16, 20, 24, 28, 32}) {
    if (n > prompt) break;
    DUET_RETURN_IF_ERROR(engine
                             .Prefill({table_a, 0, slot_a},
                                      absl::MakeConstSpan(tokens).first(static_cast<size_t>(n)))
                             .status());
  }
  DUET_RETURN_IF_ERROR(engine.Prefill({table_a, 0, slot_a}, tokens, false, &observer).status());
  DUET_RETURN_IF_ERROR(
      engine.Prefill({table_b, 0, slot_b}, absl::MakeConstSpan(tokens).first(1)).status());
  const DecodeItem a1{{table_a, prompt, slot_a}, 2};
  DUET_RETURN_IF_ERROR(engine.DecodeStep({&a1, 1}).status());
  const DecodeItem pair[] = {{{table_a, prompt + 1, slot_a}, 3}, {{table_b, 1, slot_b}, 4}};
  DUET_RETURN_IF_ERROR(engine.DecodeStepGreedy(pair).status());
  const int64_t num_tokens = prompt + 2;
  const kv::KvRect rect{0, layout.num_layers, 0, blocks};
  absl::StatusOr<std::vector<uint8_t>> payload =
      engine.ExportKv({table_a, num_tokens, slot_a}, num_tokens, rect);
  DUET_RETURN_IF_ERROR(payload.status());
  DUET_RETURN_IF_ERROR(engine.ImportKv({table_b, num_tokens, slot_b}, num_tokens, rect, *payload));

  // Decode batches of every size up to kDecodeWarmBatches (larger ones run in groups of these
  // sizes): sequences of one token, in blocks after A's and B's, stepping twice per size.
  constexpr int64_t kDecodeWarmBatches = 8;
  const int64_t seq_blocks = (2 * kDecodeWarmBatches + 2 + block_size - 1) / block_size;
  int64_t max_batch = std::min(kDecodeWarmBatches, (layout.num_blocks - 2 * blocks) / seq_blocks);
  if (fp8) max_batch = std::min(max_batch, layout.num_tail_slots);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(std::max<int64_t>(max_batch, 0)));
  for (int64_t s = 0; s < max_batch; ++s) {
    for (int64_t b = 0; b < seq_blocks; ++b) {
      tables[static_cast<size_t>(s)].push_back(
          static_cast<int32_t>(2 * blocks + s * seq_blocks + b));
    }
    const SequenceRef seq{tables[static_cast<size_t>(s)], 0, fp8 ? static_cast<int32_t>(s) : -1};
    DUET_RETURN_IF_ERROR(engine.Prefill(seq, absl::MakeConstSpan(tokens).first(1)).status());
  }
  std::vector<int64_t> position(static_cast<size_t>(std::max<int64_t>(max_batch, 0)), 1);
  for (int64_t batch = 1; batch <= max_batch; ++batch) {
    std::vector<DecodeItem> items;
    for (int64_t s = 0; s < batch; ++s) {
      items.push_back({{tables[static_cast<size_t>(s)], position[static_cast<size_t>(s)]++,
                        fp8 ? static_cast<int32_t>(s) : -1},
                       static_cast<int32_t>((s + batch) % vocab)});
    }
    DUET_RETURN_IF_ERROR(engine.DecodeStepGreedy(items).status());
    for (DecodeItem& item : items) ++item.seq.num_cached;
    for (int64_t s = 0; s < batch; ++s) ++position[static_cast<size_t>(s)];
    DUET_RETURN_IF_ERROR(engine.DecodeStep(items).status());
  }
  return absl::OkStatus();
}

}  // namespace duet
