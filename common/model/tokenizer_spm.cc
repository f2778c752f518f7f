// SentencePiece-style BPE (tokenizer.ggml.model = "llama"): score-ordered bigram merges over
// the characters of the escaped text, with byte fallback for pieces that are not tokens.
#include <queue>
#include <string>
#include <vector>

#include "common/model/tokenizer.h"
#include "common/model/unicode.h"

namespace duet {
namespace {

// A span of the escaped text. Leaves are characters; a merged node remembers its two halves
// so that a merge result that may not be emitted (an unused piece) can be split again.
struct SpmNode {
  size_t begin = 0;
  size_t end = 0;
  int32_t token = -1;  // The vocab piece with this text, or -1.
  int32_t left = -1;   // Child nodes; -1 for leaves.
  int32_t right = -1;
};

// A live symbol in the doubly linked list of the current segmentation.
struct SpmSymbol {
  int32_t node = 0;
  int32_t prev = -1;
  int32_t next = -1;
};

struct SpmBigram {
  float score;
  int32_t left;   // Symbol index.
  int32_t right;  // Symbol index.
  int32_t left_node;
  int32_t right_node;
  int32_t token;
};

// Highest score first; among equal scores the leftmost pair (SentencePiece's order).
struct SpmBigramOrder {
  bool operator()(const SpmBigram& a, const SpmBigram& b) const {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  }
};

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";

}  // namespace

bool Tokenizer::IsSpmPiece(int32_t id) const {
  if (id < 0) return false;
  const TokenType type = types_[id];
  return type == TokenType::kNormal || type == TokenType::kUserDefined ||
         type == TokenType::kUnused || type == TokenType::kUndefined;
}

void Tokenizer::EncodeSpm(std::string_view raw, bool after_special,
                          std::vector<int32_t>* out) const {
  // Escape: optional leading space, then every ' ' becomes U+2581.
  std::string text;
  text.reserve(raw.size() + 8);
  if (add_space_prefix_ && after_special) text.append(kSpmSpace);
  for (const char c : raw) {
    if (c == ' ') {
      text.append(kSpmSpace);
    } else {
      text.push_back(c);
    }
  }
  if (text.empty()) return;

  std::vector<SpmNode> nodes;
  std::vector<SpmSymbol> symbols;
  nodes.reserve(text.size() * 2);
  symbols.reserve(text.size());
  // Ill-formed UTF-8 becomes one symbol per maximal subpart; it never forms a piece and falls
  // back to its bytes.
  for (size_t pos = 0; pos < text.size();) {
    const size_t length = DecodeUtf8(std::string_view(text).substr(pos)).length;
    SpmNode node;
    node.begin = pos;
    node.end = pos + length;
    const int32_t token = FindToken(std::string_view(text).substr(pos, length));
    node.token = IsSpmPiece(token) ? token : -1;
    const auto index = static_cast<int32_t>(symbols.size());
    nodes.push_back(node);
    symbols.push_back({index, index - 1, -1});
    if (index > 0) symbols[index - 1].next = index;
    pos += length;
  }

  std::priority_queue<SpmBigram, std::vector<SpmBigram>, SpmBigramOrder> queue;
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const SpmNode& l = nodes[symbols[left].node];
    const SpmNode& r = nodes[symbols[right].node];
    const int32_t token = FindToken(std::string_view(text).substr(l.begin, r.end - l.begin));
    if (!IsSpmPiece(token)) return;
    queue.push({scores_[token], left, right, symbols[left].node, symbols[right].node, token});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const SpmBigram bigram = queue.top();
    queue.pop();
    SpmSymbol& left = symbols[bigram.left];
    SpmSymbol& right = symbols[bigram.right];
    // Stale entries: either side has merged since this pair was queued.
    if (left.node != bigram.left_node || right.node != bigram.right_node ||
        left.next != bigram.right) {
      continue;
    }
    SpmNode merged;
    merged.begin = nodes[left.node].begin;
    merged.end = nodes[right.node].end;
    merged.token = bigram.token;
    merged.left = left.node;
    merged.right = right.node;
    left.node = static_cast<int32_t>(nodes.size());
    nodes.push_back(merged);
    right.node = -1;  // Dead.
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = bigram.left;
    try_add(left.prev, bigram.left);
    try_add(bigram.left, left.next);
  }

  // Emit. A node whose piece is unused is split back into its halves (SentencePiece's
  // resegmentation); a leaf without a piece falls back to byte tokens, or to unk.
  std::vector<int32_t> stack;
  for (int32_t s = 0; s >= 0; s = symbols[s].next) {
    stack.push_back(symbols[s].node);
    while (!stack.empty()) {
      const SpmNode& node = nodes[stack.back()];
      stack.pop_back();
      if (node.token >= 0 && types_[node.token] != TokenType::kUnused) {
        out->push_back(node.token);
      } else if (node.left >= 0) {
        stack.push_back(node.right);  // Right after left: the stack is LIFO.
        stack.push_back(node.left);
      } else {
        bool unknown_emitted = false;
        for (size_t i = node.begin; i < node.end; ++i) {
          const int32_t byte_token = byte_tokens_[static_cast<uint8_t>(text[i])];
          if (byte_token >= 0) {
            out->push_back(byte_token);
          } else if (unk_id_ >= 0 && !unknown_emitted) {
            out->push_back(unk_id_);
            unknown_emitted = true;
          }
        }
      }
    }
  }
}

}  // namespace duet
