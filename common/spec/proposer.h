// Draft proposers for speculative decoding, behind one interface: n-gram / prompt lookup
// (training-free), a draft model (any smaller GGUF with the target's vocabulary, run on its own
// engine and paged KV), and the target's own weights in a lower precision (a draft model made by
// requantizing the target in memory, common/model/requantize.h; no second file).
//
// Drafting is greedy for every proposer: the drafts are deterministic, so the acceptance rule
// sees a point-mass draft distribution q (common/spec/acceptance.h), which is lossless for
// sampled requests too.
//
// Draft-model KV: each sequence the proposer has seen keeps its own block table in the draft
// engine's pool (F16 KV, so rolling back is just running from an earlier position) and the
// tokens whose KV it holds. A call catches the draft up on the tokens the target accepted
// since (reusing the longest common prefix with what the draft ran), then drafts k tokens: one
// batched Verify pass over every sequence's new tokens, then k - 1 batched decode steps.
//
// Thread safety: not thread-safe (the node's worker thread drives it, as its engines).
#ifndef DUET_COMMON_SPEC_PROPOSER_H_
#define DUET_COMMON_SPEC_PROPOSER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/engine/engine.h"
#include "common/kv/block_pool.h"
#include "common/spec/ngram_proposer.h"

namespace duet::spec {

struct ProposeRequest {
  uint64_t key = 0;                   // the caller's id of the sequence (state between calls)
  absl::Span<const int32_t> context;  // prompt, then generated tokens; the last runs next
  int64_t max_drafts = 0;             // >= 0; 0 asks for nothing
};

class Proposer {
 public:
  virtual ~Proposer() = default;
  // "ngram", "draft" or "self".
  virtual std::string name() const = 0;
  // Up to max_drafts tokens for each request (fewer, or none, when the proposer has no good
  // guess or no room). Errors only from a draft engine (the caller may go on without drafts).
  virtual absl::StatusOr<std::vector<std::vector<int32_t>>> Propose(
      absl::Span<const ProposeRequest> batch) = 0;
  // The sequence ended: frees what the proposer keeps for it (no-op for unknown keys).
  virtual void Release(uint64_t /*key*/) {}
};

// Prompt lookup over the sequence's own tokens (ProposeNgram).
class NgramProposer final : public Proposer {
 public:
  explicit NgramProposer(const NgramConfig& config) : config_(config) {}
  std::string name() const override { return "ngram"; }
  absl::StatusOr<std::vector<std::vector<int32_t>>> Propose(
      absl::Span<const ProposeRequest> batch) override;

 private:
  NgramConfig config_;
};

// A draft model on its own engine.
class DraftModelProposer final : public Proposer {
 public:
  // `engine` runs the draft model (F32 or F16 KV; FP8 cannot roll back sealed blocks).
  // INVALID_ARGUMENT when its vocab differs from target_vocab_size or its KV is FP8.
  static absl::StatusOr<std::unique_ptr<DraftModelProposer>> Create(std::unique_ptr<Engine> engine,
                                                                    int32_t target_vocab_size,
                                                                    std::string name);
  std::string name() const override { return name_; }
  absl::StatusOr<std::vector<std::vector<int32_t>>> Propose(
      absl::Span<const ProposeRequest> batch) override;
  void Release(uint64_t key) override;

  // For tests: blocks held by the sequences the proposer tracks.
  int64_t num_used_blocks() const { return blocks_.num_used(); }
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }

 private:
  struct Seq {
    std::vector<int32_t> table;
    std::vector<int32_t> tokens;  // positions [0, tokens.size()) have KV in the draft engine
  };

  DraftModelProposer(std::unique_ptr<Engine> engine, std::string name);
  // Grows s's table to cover `positions`; false when the pool cannot.
  bool Cover(Seq& s, int64_t positions);

  std::unique_ptr<Engine> engine_;
  std::string name_;
  kv::BlockPool blocks_;
  absl::node_hash_map<uint64_t, Seq> seqs_;  // node map: Propose holds pointers to values
};

}  // namespace duet::spec

#endif  // DUET_COMMON_SPEC_PROPOSER_H_
