// Tokenizers built from GGUF metadata: SentencePiece-style BPE (`tokenizer.ggml.model` =
// "llama") and byte-level BPE ("gpt2"), matching the Hugging Face tokenizers these vocabs were
// converted from (llama.cpp's llama-vocab.cpp documents the conventions).
//
// Encoding:
//   1. Special-token partition: the texts of user-defined tokens (and, with parse_special, of
//      control and unknown tokens) are cut out of the input as single tokens, leftmost match
//      first, longest at a position (Hugging Face's added-token matching).
//   2. Each remaining fragment is tokenized on its own:
//      SPM: spaces become U+2581, a leading U+2581 is added to a fragment at the start of the
//        text or right after a special token (when add_space_prefix), then the adjacent pair
//        whose concatenation is the highest-scoring vocab piece is merged until none is left
//        (ties: leftmost). Pieces that are not tokens fall back to byte tokens <0xXX>.
//      BPE: the fragment is split into words by the pre-tokenizer regexes, each word's bytes are
//        mapped to GPT-2 byte-level characters, and the adjacent pair with the lowest rank in
//        `tokenizer.ggml.merges` is merged until none is left (ties: leftmost).
//   3. add_special adds BOS/EOS per the vocab's add_bos/add_eos.
// Decoding concatenates TokenToPiece; nothing is stripped (an SPM text keeps the leading space
// its first token carries) and no "clean up tokenization spaces" pass runs.
//
// Thread safety: a Tokenizer is immutable after construction; all methods may be called
// concurrently.
#ifndef DUET_COMMON_MODEL_TOKENIZER_H_
#define DUET_COMMON_MODEL_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model/gguf.h"
#include "common/model/pretokenizer.h"

namespace duet {

enum class TokenizerKind { kSpm, kBpe };

// `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type); on disk, never renumber.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// A vocab in memory: what FromGguf reads from `tokenizer.ggml.*`, or what a test builds.
struct TokenizerVocab {
  TokenizerKind kind = TokenizerKind::kSpm;
  std::vector<std::string> tokens;     // Token id -> text. Required, non-empty.
  std::vector<float> scores;           // Empty (all 0) or one per token. SPM: higher merges first.
  std::vector<TokenType> token_types;  // Empty (all normal) or one per token.
  std::vector<std::string> merges;     // BPE only: "left right", highest priority first.
  std::string pre = "default";         // BPE pre-tokenizer name (tokenizer.ggml.pre).
  // Special token ids; -1 (or any id outside the vocab) means absent. An SPM vocab without
  // them uses llama.cpp's defaults bos=1, eos=2, unk=0. eot/eom left at -1 are looked up by
  // well-known texts ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|eom_id|>").
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  int32_t eot_id = -1;
  int32_t eom_id = -1;
  // Unset: SPM adds BOS and a space prefix; BPE adds neither, except the pre-tokenizers that
  // llama.cpp marks as adding BOS (llama3 family, tekken). Neither adds EOS.
  std::optional<bool> add_bos;
  std::optional<bool> add_eos;
  std::optional<bool> add_space_prefix;
  // Special tokens that, when matched in text, also swallow the whitespace after them (Hugging
  // Face's added-token `rstrip`). GGUF does not store this; FromGguf applies llama.cpp's rule
  // for Phi-3 vocabs (general.name containing "phi-3" or "phi3").
  std::vector<int32_t> rstrip_ids;
};

class Tokenizer {
 public:
  // Reads tokenizer.ggml.model ("llama" -> SPM, "gpt2" -> BPE; others: INVALID_ARGUMENT naming
  // it), tokens, scores, token_type, merges, pre, bos/eos/unk/pad/eot/eom ids,
  // add_bos_token/add_eos_token and add_space_prefix. Missing tokens (or merges for BPE):
  // NOT_FOUND naming the key; wrong types, length mismatches and bad values: INVALID_ARGUMENT
  // naming the key.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& file);
  // Same checks as FromGguf, on a vocab already in memory.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocab(TokenizerVocab vocab);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // add_special: add BOS/EOS per add_bos()/add_eos(). parse_special: treat the texts of
  // control and unknown tokens found in `text` as those single tokens (user-defined tokens are
  // always matched, as in Hugging Face). Any bytes are accepted; ill-formed UTF-8 is encoded
  // through byte tokens where the vocab has them.
  std::vector<int32_t> Encode(std::string_view text, bool add_special,
                              bool parse_special = false) const;

  // The bytes one token contributes to text: byte tokens give their byte, SPM's U+2581 gives
  // ' ', byte-level BPE text is mapped back to bytes. Control and unknown tokens give ""
  // unless render_special (then their text); user-defined tokens always give their text.
  // Ids outside the vocab give "". The result may be a fragment of a UTF-8 sequence.
  std::string TokenToPiece(int32_t id, bool render_special = false) const;
  // Concatenated TokenToPiece; ids outside the vocab are skipped. Not sanitized: the result
  // is exactly the tokens' bytes, so it is valid UTF-8 whenever the tokens form whole
  // characters.
  std::string Decode(absl::Span<const int32_t> ids, bool render_special = false) const;

  int32_t vocab_size() const { return static_cast<int32_t>(texts_.size()); }
  int32_t bos_id() const { return bos_id_; }  // -1 if none.
  int32_t eos_id() const { return eos_id_; }  // -1 if none.
  int32_t unk_id() const { return unk_id_; }  // -1 if none.
  int32_t pad_id() const { return pad_id_; }  // -1 if none.
  int32_t eot_id() const { return eot_id_; }  // -1 if none.
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  bool add_space_prefix() const { return add_space_prefix_; }
  // True for eos, eot and eom (those that exist).
  bool IsEndOfGeneration(int32_t id) const;
  bool IsValidId(int32_t id) const { return id >= 0 && id < vocab_size(); }
  TokenizerKind kind() const { return kind_; }
  std::string_view pre() const { return pre_; }  // tokenizer.ggml.pre; "default" when absent.
  // Raw vocab string; "" for ids outside the vocab.
  const std::string& TokenText(int32_t id) const;
  // kUndefined for ids outside the vocab.
  TokenType GetTokenType(int32_t id) const;
  // The id whose raw text is `text`, or -1.
  int32_t FindToken(std::string_view text) const;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  // One BPE merge rule, keyed by (left id << 32 | right id).
  struct BpeMerge {
    int32_t rank;
    int32_t merged_id;
  };

  // Piece of the input after the special-token partition: raw text, or one token.
  struct Fragment {
    std::string_view text;
    int32_t token = -1;  // >= 0: a special token; text is empty.
  };

  Tokenizer() = default;

  absl::Status Init(TokenizerVocab vocab);
  // Resolves special ids: out-of-range ids become -1; defaults and eot/eom lookup by text.
  void InitSpecialTokens(const TokenizerVocab& vocab);
  absl::Status InitBpe(const std::vector<std::string>& merges);  // tokenizer_bpe.cc
  void InitSpecialMatcher();
  void InitPieces();

  std::vector<Fragment> Partition(std::string_view text, bool parse_special) const;
  // Tokenizes one raw fragment; `after_special` is true at the start of the text and after a
  // special token (SPM adds its space prefix there).
  void EncodeSpm(std::string_view text, bool after_special,
                 std::vector<int32_t>* out) const;                         // tokenizer_spm.cc
  void EncodeBpe(std::string_view text, std::vector<int32_t>* out) const;  // tokenizer_bpe.cc
  // BPE merges over one pre-tokenized word.
  void EncodeBpeWord(std::string_view word, std::vector<int32_t>* out) const;  // tokenizer_bpe.cc
  // SPM: may `id` take part in a merge (normal, user-defined and unused pieces, as in
  // SentencePiece; never control, unknown or byte tokens)?
  bool IsSpmPiece(int32_t id) const;

  TokenizerKind kind_ = TokenizerKind::kSpm;
  std::string pre_ = "default";
  std::vector<std::string> texts_;
  std::vector<float> scores_;
  std::vector<TokenType> types_;
  std::vector<bool> rstrip_;  // Per token; see TokenizerVocab::rstrip_ids.
  TokenMap token_to_id_;      // First id wins when texts repeat.
  // What each token decodes to with render_special (SPM unescaped, byte-level BPE unmapped).
  std::vector<std::string> pieces_;

  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t unk_id_ = -1;
  int32_t pad_id_ = -1;
  int32_t eot_id_ = -1;
  int32_t eom_id_ = -1;
  bool add_bos_ = false;
  bool add_eos_ = false;
  bool add_space_prefix_ = false;

  // Byte value -> token: SPM "<0xXX>" (or the ASCII character itself); BPE the byte's GPT-2
  // character. -1 where the vocab has none.
  std::array<int32_t, 256> byte_tokens_{};

  // Special-token matcher: a byte trie over the texts of control, unknown and user-defined
  // tokens. Edge key: node << 8 | byte.
  std::unordered_map<uint64_t, int32_t> special_edges_;
  std::vector<int32_t> special_node_token_;  // Node -> token ending there, or -1.
  std::array<bool, 256> special_first_byte_{};

  // BPE.
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unordered_map<uint64_t, BpeMerge> bpe_merges_;
  bool ignore_merges_ = false;
};

}  // namespace duet

#endif  // DUET_COMMON_MODEL_TOKENIZER_H_
