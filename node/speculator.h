// Speculative decoding on a decode (or colocated) node: the proposer, the per-sequence
// adaptive draft length, and one speculative step over the node's decode batch.
//
// Each step the node asks Lookahead() how many drafted positions each running sequence should
// get (the scheduler grants them from free blocks: sched::Scheduler::SetLookahead), then hands
// the plan's decode entries to Step(): the proposer drafts up to num_lookahead tokens per
// sequence; one Engine::VerifyBatch runs every sequence of the batch -- [token, drafts...], or
// just [token] for one without drafts -- so continuous batching goes on; each drafting sequence
// keeps the longest lossless prefix (spec::AcceptGreedy for ArgMax requests, the
// Leviathan/Chen rejection rule over the completion's own distribution otherwise, with the
// RNG of TokenSeed(seed, first token index)); one CommitBatch stores the KV of every
// sequence's token and kept drafts (the rejected positions are simply not committed, and the
// scheduler releases their blocks). When no sequence drafted anything, Step returns nullopt
// and the node runs its plain decode step.
//
// Adaptivity (common/spec/adaptive.h): per sequence, an acceptance-rate estimate; per node, a
// learned line of step time against rows (fed by every verify and plain step) and the
// measured draft time per drafted position. A sequence drafts only when the expected speedup
// of the whole batch is at least min_speedup, so large batches (compute-bound), slow drafts and
// unpredictable text switch speculation off; probes turn it back on where it could pay. Every
// 16th step in a row of speculative ones runs plain, so the step time without drafts stays
// measured.
//
// On top of the model, a measured check per batch size: the node's tokens per second in
// speculative steps (drafting included) against plain steps, both decayed averages. Where
// speculation is measured slower than plain decoding, that batch size stays plain, but for one
// speculative step after 64 plain ones (a re-test, so a change in the text or the load is
// noticed; the wait doubles up to 1024 while re-tests keep losing). The
// model chooses how much to draft; the measurement guards against what the model misses (the
// verify step's own overheads, many sequences probing at once).
//
// Requests that ask for logprobs never draft (their tokens come from the plain sampler, which
// reports logprobs); they still share the verify pass with one row.
//
// Thread safety: not thread-safe; the node's worker thread drives it with the engines.
#ifndef DUET_NODE_SPECULATOR_H_
#define DUET_NODE_SPECULATOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/engine/engine.h"
#include "common/model/ggml_types.h"
#include "common/model/gguf.h"
#include "common/spec/adaptive.h"
#include "common/spec/ngram_proposer.h"
#include "common/spec/proposer.h"
#include "node/completion.h"

namespace duet::node {

struct SpeculationOptions {
  // "off", "ngram" (prompt lookup), "draft" (draft_model), "self" (the target's weights
  // requantized to self_draft_type).
  std::string method = "off";
  std::string draft_model;  // GGUF path, method "draft"
  GgmlType self_draft_type = GgmlType::kQ4_0;
  spec::NgramConfig ngram;
  spec::AdaptiveConfig adaptive;  // adaptive.max_draft_tokens: the most drafts per step
  // False: every sequence asks for max_draft_tokens every step (tests, benchmarks).
  bool adaptive_enabled = true;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

// Totals since the speculator was created (the node's metrics read them).
struct SpeculationStats {
  int64_t num_drafts = 0;           // sequence-steps that verified at least one draft
  int64_t num_draft_tokens = 0;     // drafted tokens verified
  int64_t num_accepted_tokens = 0;  // of them, accepted
  std::vector<int64_t> accepted_per_position;  // [max_draft_tokens]: draft i accepted
  int64_t num_emitted_tokens = 0;   // tokens speculative steps emitted (accepted + 1 each)
};

class Speculator {
 public:
  // Builds the proposer: a draft engine on `backend` (the target's) for "draft" and "self".
  // `target_options`: the target engine's options (device, pool size in blocks); the draft's
  // pool holds as many tokens, in F16. Errors: bad options, an unreadable or incompatible
  // draft model (vocab), the draft engine's creation.
  static absl::StatusOr<std::unique_ptr<Speculator>> Create(
      const SpeculationOptions& options, const std::string& backend,
      std::shared_ptr<const GgufFile> target_file, const Engine& target,
      const EngineOptions& target_options);

  const std::string& method() const { return options_.method; }
  int64_t max_draft_tokens() const { return options_.adaptive.max_draft_tokens; }

  // Drafted positions to ask for sequence `key` in a step of `batch` decode rows (0: none).
  int64_t Lookahead(uint64_t key, int64_t batch);

  struct Item {
    uint64_t key = 0;
    SequenceRef seq;                    // covers seq.num_cached + 1 + lookahead positions
    int32_t token = 0;                  // runs at seq.num_cached
    // Prompt, then generated tokens (ends with token); read only when lookahead > 0.
    absl::Span<const int32_t> context;
    int64_t lookahead = 0;              // granted drafted positions (0: this step plain)
    const Completion* completion = nullptr;
  };
  struct Outcome {
    // Emitted tokens: the kept drafts then the next token; empty when `logits` is set.
    std::vector<int32_t> tokens;
    // A sequence that drafted nothing and does not take the ArgMax: its row of logits, to
    // sample as a plain step would (same seed, logprobs).
    std::vector<float> logits;
    int64_t drafted = 0;
    int64_t accepted = 0;
  };
  // One speculative step of the batch on `target` (see the file comment); commits every
  // item's token and its kept drafts. nullopt: nothing was drafted (or the draft engine failed,
  // which is logged), nothing ran on the target -- run the plain decode step. The target's
  // errors are returned (nothing committed).
  absl::StatusOr<std::optional<std::vector<Outcome>>> Step(Engine& target,
                                                           absl::Span<const Item> items);
  // A plain decode step of `rows` sequences took `seconds` (feeds the cost model).
  void ObservePlainStep(int64_t rows, double seconds);
  // The sequence ended.
  void Release(uint64_t key);

  const SpeculationStats& stats() const { return stats_; }

 private:
  Speculator(const SpeculationOptions& options, std::unique_ptr<spec::Proposer> proposer);

  SpeculationOptions options_;
  std::unique_ptr<spec::Proposer> proposer_;
  absl::flat_hash_map<uint64_t, spec::AcceptanceTracker> trackers_;
  spec::StepCostModel cost_;
  // Decayed totals of tokens emitted and seconds spent, per batch size (capped), in plain and
  // in speculative steps.
  struct Throughput {
    double tokens = 0;
    double seconds = 0;
    int64_t steps = 0;
    void Add(double t, double s);
    double rate() const { return seconds > 0 ? tokens / seconds : 0; }
  };
  struct Bucket {
    Throughput plain;
    Throughput spec;
    int64_t plain_steps_since_spec = 0;
    int64_t retest_interval = 64;  // doubles (to 1024) while re-tests keep losing
  };
  Bucket& BucketFor(int64_t batch);
  // Whether speculation is measured to pay (or is being re-tested) at this batch size.
  bool MeasuredToPay(int64_t batch);

  std::vector<Bucket> buckets_;
  double draft_cost_per_token_s_ = 0;  // EMA of the proposer's time per draft position
  bool draft_cost_known_ = false;
  int64_t spec_steps_since_plain_ = 0;  // a plain step is forced every kPlainStepInterval
  SpeculationStats stats_;
};

}  // namespace duet::node

#endif  // DUET_NODE_SPECULATOR_H_
