// Regex pre-tokenization for byte-level BPE: splits text into words before merges run.
//
// Each vocab names its pre-tokenizer in `tokenizer.ggml.pre`; PreTokenizerSpecFor maps that
// name to the regex list of the model's original tokenizer (Hugging Face `tokenizer.json`),
// as llama.cpp's llama-vocab.cpp documents them. Patterns are compiled with PCRE2 in UTF
// mode with Unicode properties (\p{L}, \p{N}, \s, ... follow Unicode, not ASCII), so the
// original patterns run unchanged, lookahead included.
#ifndef DUET_COMMON_MODEL_PRETOKENIZER_H_
#define DUET_COMMON_MODEL_PRETOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace duet {

// What a `tokenizer.ggml.pre` name implies.
struct PreTokenizerSpec {
  std::vector<std::string> patterns;  // PCRE2 syntax, applied in order (see PreTokenizer).
  // A word that is itself a vocab token is emitted whole instead of being merged (Llama 3).
  bool ignore_merges = false;
  // Default for tokenizer.ggml.add_bos_token when the file does not set it.
  bool add_bos = false;
};

// The spec for `pre` ("default" for vocabs that do not name one). INVALID_ARGUMENT naming
// `pre` when it is unknown.
absl::StatusOr<PreTokenizerSpec> PreTokenizerSpecFor(std::string_view pre);

// Thread-safe after construction: Split may run concurrently on one instance.
class PreTokenizer {
 public:
  // Compiles every pattern once (JIT-compiled where PCRE2 supports it). INVALID_ARGUMENT
  // naming the pattern and offset when one does not compile.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(std::vector<std::string> patterns);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Splits `text` into non-empty pieces whose concatenation is `text`. Starting from the whole
  // text, each pattern in turn splits every current piece into its matches and the gaps
  // between them, keeping both (Hugging Face's Split with "isolated" behavior). Matching is
  // confined to one piece, so anchors and lookarounds see the piece's ends as text ends. Bytes
  // that are not valid UTF-8 never match and stay, unchanged, in gap pieces. The views point
  // into `text`.
  std::vector<std::string_view> Split(std::string_view text) const;

  size_t num_patterns() const { return patterns_.size(); }

 private:
  struct Compiled;
  explicit PreTokenizer(std::vector<std::unique_ptr<Compiled>> patterns);

  std::vector<std::unique_ptr<Compiled>> patterns_;
};

}  // namespace duet

#endif  // DUET_COMMON_MODEL_PRETOKENIZER_H_
