// Decoding a batch of prompts together on one engine, with or without speculative decoding:
// the loop a decode node runs, without the scheduler (fixed block ranges, all sequences
// admitted at once). Shared by the speculation tests and `duet bench-spec`.
#ifndef DUET_NODE_BATCH_GENERATE_H_
#define DUET_NODE_BATCH_GENERATE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "node/completion.h"
#include "node/speculator.h"

namespace duet::node {

struct BatchGenerateResult {
  std::vector<std::vector<int32_t>> outputs;  // per prompt, `max_new` tokens each
  int64_t steps = 0;                          // target passes after the prefills
  double prefill_seconds = 0;
  double decode_seconds = 0;  // every step after the prefills (drafting included)
};

// Prefills each prompt, samples its first token, then decodes all of them together until each
// has `max_new` tokens (ignoring EOS), speculating with `spec` when non-null (sequence i is
// speculator key key_base + i; Release()d at the end). Sequence i uses blocks
// [i * blocks_per_seq, (i + 1) * blocks_per_seq) and tail slot i. REQUIRES: the engine's pool
// and tail slots cover that, and blocks_per_seq covers prompt + max_new + the most drafts.
// `sampling`: every request's (its seed + i per prompt). Errors: the engine's.
absl::StatusOr<BatchGenerateResult> GenerateBatch(Engine& engine, Speculator* spec,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  int64_t max_new, const RequestSampling& sampling,
                                                  int64_t blocks_per_seq, uint64_t key_base = 0);

}  // namespace duet::node

#endif  // DUET_NODE_BATCH_GENERATE_H_
