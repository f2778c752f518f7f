#include "common/model/detokenizer.h"

#include "common/model/unicode.h"

namespace duet {

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

std::string StreamingDetokenizer::Push(int32_t id) {
  pending_.append(tokenizer_->TokenToPiece(id));
  // Only the final sequence can still be completed by later bytes; everything before it is
  // final now. The maximal-subpart rule makes sanitizing the pieces separately equal to
  // sanitizing the whole.
  const size_t complete = Utf8CompletePrefixLength(pending_);
  std::string out = SanitizeUtf8(std::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return out;
}

std::string StreamingDetokenizer::Flush() {
  std::string out = SanitizeUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace duet
