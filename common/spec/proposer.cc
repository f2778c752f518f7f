#include "common/spec/proposer.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/base/status.h"

namespace duet::spec {

absl::StatusOr<std::vector<std::vector<int32_t>>> NgramProposer::Propose(
    absl::Span<const ProposeRequest> batch) {
  std::vector<std::vector<int32_t>> drafts;
  drafts.reserve(batch.size());
  for (const ProposeRequest& r : batch) {
    drafts.push_back(ProposeNgram(r.context, r.max_drafts, config_));
  }
  return drafts;
}

absl::StatusOr<std::unique_ptr<DraftModelProposer>> DraftModelProposer::Create(
    std::unique_ptr<Engine> engine, int32_t target_vocab_size, std::string name) {
  if (engine->config().vocab_size != target_vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("the draft model's vocab has ", engine->config().vocab_size,
                     " tokens, the target's ", target_vocab_size, ": they must be the same"));
  }
  if (engine->kv_layout().dtype == kv::CacheDtype::kFp8E4M3) {
    return absl::InvalidArgumentError("the draft model's KV must be f32 or f16, not fp8");
  }
  return std::unique_ptr<DraftModelProposer>(new DraftModelProposer(std::move(engine),
                                                                    std::move(name)));
}

DraftModelProposer::DraftModelProposer(std::unique_ptr<Engine> engine, std::string name)
    : engine_(std::move(engine)), name_(std::move(name)), blocks_(engine_->kv_layout().num_blocks) {}

bool DraftModelProposer::Cover(Seq& s, int64_t positions) {
  const int64_t bs = engine_->kv_layout().block_size;
  const int64_t need = (positions + bs - 1) / bs - static_cast<int64_t>(s.table.size());
  if (need <= 0) return true;
  if (!blocks_.CanAllocate(need)) return false;
  absl::StatusOr<std::vector<int32_t>> fresh = blocks_.Allocate(need);
  if (!fresh.ok()) return false;
  s.table.insert(s.table.end(), fresh->begin(), fresh->end());
  return true;
}

void DraftModelProposer::Release(uint64_t key) {
  auto it = seqs_.find(key);
  if (it == seqs_.end()) return;
  (void)blocks_.Release(it->second.table);
  seqs_.erase(it);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> DraftModelProposer::Propose(
    absl::Span<const ProposeRequest> batch) {
  std::vector<std::vector<int32_t>> drafts(batch.size());
  const int64_t context_length = engine_->config().context_length;
  // 1. Catch up: each drafting sequence runs its tokens past the common prefix with what the
  //    draft ran before (the last token at least), all in one Verify pass.
  struct Active {
    size_t index;
    Seq* seq;
    int64_t start;  // first position of this call's catch-up
  };
  std::vector<Active> active;
  absl::flat_hash_set<uint64_t> in_batch;
  for (const ProposeRequest& r : batch) in_batch.insert(r.key);
  for (size_t i = 0; i < batch.size(); ++i) {
    const ProposeRequest& r = batch[i];
    const int64_t n = static_cast<int64_t>(r.context.size());
    if (r.max_drafts <= 0 || n == 0 || n + r.max_drafts - 1 > context_length) continue;
    Seq& s = seqs_[r.key];
    int64_t common = 0;
    const int64_t limit = std::min<int64_t>(static_cast<int64_t>(s.tokens.size()), n - 1);
    while (common < limit && s.tokens[static_cast<size_t>(common)] ==
                                 r.context[static_cast<size_t>(common)]) {
      ++common;
    }
    s.tokens.resize(static_cast<size_t>(common));
    if (!Cover(s, n + r.max_drafts - 1)) {
      // Pool full: drop the sequences not drafting now, then try once more.
      for (auto it = seqs_.begin(); it != seqs_.end();) {
        if (!in_batch.contains(it->first)) {
          (void)blocks_.Release(it->second.table);
          seqs_.erase(it++);
        } else {
          ++it;
        }
      }
      if (!Cover(s, n + r.max_drafts - 1)) continue;
    }
    // A long catch-up (a new sequence: its whole prompt) prefills all but the last
    // kMaxVerifyTokens tokens first.
    if (n - common > kMaxVerifyTokens) {
      const int64_t end = n - kMaxVerifyTokens;
      absl::StatusOr<std::vector<float>> logits = engine_->Prefill(
          {s.table, common, -1}, r.context.subspan(static_cast<size_t>(common),
                                                   static_cast<size_t>(end - common)));
      if (!logits.ok()) {
        Release(r.key);
        return logits.status();
      }
      s.tokens.assign(r.context.begin(), r.context.begin() + end);
      common = end;
    }
    active.push_back({i, &s, common});
  }
  if (active.empty()) return drafts;

  std::vector<VerifyItem> items;
  items.reserve(active.size());
  for (const Active& a : active) {
    const ProposeRequest& r = batch[a.index];
    items.push_back({{a.seq->table, a.start, -1}, r.context.subspan(static_cast<size_t>(a.start))});
  }
  DUET_ASSIGN_OR_RETURN(std::vector<int32_t> ids, engine_->VerifyBatchGreedy(items));
  std::vector<CommitItem> commits;
  size_t row = 0;
  for (size_t j = 0; j < active.size(); ++j) {
    const int64_t n = static_cast<int64_t>(items[j].tokens.size());
    row += static_cast<size_t>(n);
    drafts[active[j].index].push_back(ids[row - 1]);
    commits.push_back({items[j].seq, n});
  }
  DUET_RETURN_IF_ERROR(engine_->CommitBatch(commits));
  for (const Active& a : active) {
    const ProposeRequest& r = batch[a.index];
    a.seq->tokens.assign(r.context.begin(), r.context.end());
  }

  // 2. Draft: each step runs every sequence's newest draft and proposes the next.
  for (int64_t step = 1;; ++step) {
    std::vector<DecodeItem> decode;
    std::vector<const Active*> who;
    for (const Active& a : active) {
      if (batch[a.index].max_drafts <= step) continue;
      Seq& s = *a.seq;
      const int32_t last = drafts[a.index].back();
      decode.push_back({{s.table, static_cast<int64_t>(s.tokens.size()), -1}, last});
      who.push_back(&a);
    }
    if (decode.empty()) break;
    DUET_ASSIGN_OR_RETURN(std::vector<int32_t> next, engine_->DecodeStepGreedy(decode));
    for (size_t j = 0; j < who.size(); ++j) {
      who[j]->seq->tokens.push_back(decode[j].token);
      drafts[who[j]->index].push_back(next[j]);
    }
  }
  return drafts;
}

}  // namespace duet::spec
