// Incremental detokenization for streaming responses.
#ifndef DUET_COMMON_MODEL_DETOKENIZER_H_
#define DUET_COMMON_MODEL_DETOKENIZER_H_

#include <cstdint>
#include <string>

#include "common/model/tokenizer.h"

namespace duet {

// Turns a stream of token ids into text that is always valid UTF-8 and never splits a
// character: a token that ends inside a multi-byte character (e.g. the first <0xE4> of three
// byte-fallback tokens) is held until the character completes.
//
// The concatenation of every Push and the final Flush equals
// SanitizeUtf8(tokenizer.Decode(ids)): exactly Decode's text when that is valid UTF-8, and
// otherwise the same text with each ill-formed subpart replaced by U+FFFD. Bytes that can no
// longer become a character are replaced as soon as that is known, never held.
// Ids outside the vocab and control tokens contribute nothing (as in Decode without
// render_special).
//
// Not thread-safe; use one per stream.
class StreamingDetokenizer {
 public:
  // REQUIRES: tokenizer outlives this.
  explicit StreamingDetokenizer(const Tokenizer& tokenizer);

  // The newly complete text after `id`; may be empty. Never ends inside a UTF-8 sequence.
  std::string Push(int32_t id);
  // The rest: an incomplete tail becomes U+FFFD. Resets the state, so the object can start a
  // new stream.
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;  // Not owned.
  std::string pending_;         // At most 3 bytes: a valid but incomplete sequence prefix.
};

}  // namespace duet

#endif  // DUET_COMMON_MODEL_DETOKENIZER_H_
