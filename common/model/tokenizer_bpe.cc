// Byte-level BPE (tokenizer.ggml.model = "gpt2"): regex pre-tokenization, then rank-ordered
// merges over the GPT-2 byte-level characters of each word.
#include <queue>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/model/tokenizer.h"
#include "common/model/unicode.h"

namespace duet {
namespace {

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct BpeSymbol {
  int32_t token;  // -1 when the word's byte has no token (the vocab lacks that character).
  int32_t prev;
  int32_t next;
};

struct BpeCandidate {
  int32_t rank;
  int32_t left;  // Symbol indices.
  int32_t right;
  int32_t left_token;
  int32_t right_token;
  int32_t merged;
};

// Lowest rank first; among equal ranks the leftmost pair.
struct BpeCandidateOrder {
  bool operator()(const BpeCandidate& a, const BpeCandidate& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.left > b.left;
  }
};

}  // namespace

absl::Status Tokenizer::InitBpe(const std::vector<std::string>& merges) {
  bpe_merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string_view merge = merges[rank];
    // The separator is the first space after the first character, as llama.cpp reads it, so a
    // left part may itself start with a space.
    const size_t space = merge.size() > 1 ? merge.find(' ', 1) : std::string_view::npos;
    if (space == std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.merges[", rank, "] = '",
                                                     std::string(merge), "' is not 'left right'"));
    }
    const std::string_view left = merge.substr(0, space);
    const std::string_view right = merge.substr(space + 1);
    const int32_t left_id = FindToken(left);
    const int32_t right_id = FindToken(right);
    const int32_t merged_id = FindToken(std::string(left).append(right));
    // A rule whose parts or result are not tokens can never apply to a segmentation of
    // tokens; Hugging Face drops such rules too.
    if (left_id < 0 || right_id < 0 || merged_id < 0) continue;
    bpe_merges_.emplace(PairKey(left_id, right_id),
                        BpeMerge{static_cast<int32_t>(rank), merged_id});  // First rank wins.
  }
  return absl::OkStatus();
}

void Tokenizer::EncodeBpe(std::string_view text, std::vector<int32_t>* out) const {
  for (const std::string_view word : pre_tokenizer_->Split(text)) EncodeBpeWord(word, out);
}

void Tokenizer::EncodeBpeWord(std::string_view word, std::vector<int32_t>* out) const {
  if (ignore_merges_) {
    const int32_t whole = FindToken(BytesToByteLevel(word));
    if (whole >= 0) {
      out->push_back(whole);
      return;
    }
  }
  // Every byte maps to one byte-level character, so the initial symbols are the word's bytes.
  const auto n = static_cast<int32_t>(word.size());
  std::vector<BpeSymbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_tokens_[static_cast<uint8_t>(word[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }

  std::priority_queue<BpeCandidate, std::vector<BpeCandidate>, BpeCandidateOrder> queue;
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t lt = symbols[left].token;
    const int32_t rt = symbols[right].token;
    if (lt < 0 || rt < 0) return;
    const auto it = bpe_merges_.find(PairKey(lt, rt));
    if (it == bpe_merges_.end()) return;
    queue.push({it->second.rank, left, right, lt, rt, it->second.merged_id});
  };
  for (int32_t i = 1; i < n; ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const BpeCandidate c = queue.top();
    queue.pop();
    BpeSymbol& left = symbols[c.left];
    BpeSymbol& right = symbols[c.right];
    // Stale entries: a side merged (its token changed) or the pair is no longer adjacent.
    if (left.next != c.right || left.token != c.left_token || right.token != c.right_token) {
      continue;
    }
    left.token = c.merged;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    right.token = -1;
    right.next = -1;
    right.prev = -1;
    try_add(left.prev, c.left);
    try_add(c.left, left.next);
  }

  for (int32_t i = 0; i >= 0 && i < n; i = symbols[i].next) {
    if (symbols[i].token >= 0) {
      out->push_back(symbols[i].token);
    } else if (unk_id_ >= 0) {
      out->push_back(unk_id_);  // A byte whose character the vocab lacks.
    }
  }
}

}  // namespace duet
