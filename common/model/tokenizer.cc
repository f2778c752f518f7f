#include "common/model/tokenizer.h"

#include <cctype>
#include <cstdio>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/status.h"
#include "common/model/unicode.h"

namespace duet {
namespace {

constexpr char kKeyModel[] = "tokenizer.ggml.model";
constexpr char kKeyTokens[] = "tokenizer.ggml.tokens";
constexpr char kKeyScores[] = "tokenizer.ggml.scores";
constexpr char kKeyTokenType[] = "tokenizer.ggml.token_type";
constexpr char kKeyMerges[] = "tokenizer.ggml.merges";
constexpr char kKeyPre[] = "tokenizer.ggml.pre";
constexpr char kKeyBosId[] = "tokenizer.ggml.bos_token_id";
constexpr char kKeyEosId[] = "tokenizer.ggml.eos_token_id";
constexpr char kKeyUnkId[] = "tokenizer.ggml.unknown_token_id";
constexpr char kKeyPadId[] = "tokenizer.ggml.padding_token_id";
constexpr char kKeyEotId[] = "tokenizer.ggml.eot_token_id";
constexpr char kKeyEomId[] = "tokenizer.ggml.eom_token_id";
constexpr char kKeyAddBos[] = "tokenizer.ggml.add_bos_token";
constexpr char kKeyAddEos[] = "tokenizer.ggml.add_eos_token";
constexpr char kKeyAddSpacePrefix[] = "tokenizer.ggml.add_space_prefix";
constexpr char kKeyName[] = "general.name";

// Texts that mark an end-of-turn token in vocabs that do not name one (llama.cpp's list).
constexpr std::string_view kEotTexts[] = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<EOT>",
    "<\uFF5Cend\u2581of\u2581sentence\uFF5C>",  // DeepSeek.
};
constexpr std::string_view kEomText = "<|eom_id|>";

// SentencePiece's escaped space, U+2581.
constexpr std::string_view kSpmSpace = "\xE2\x96\x81";

const std::string& EmptyString() {
  static const std::string* const kEmpty = new std::string();
  return *kEmpty;
}

// Metadata lookups where absence is fine: nullopt when the key is missing, an error when it is
// present with the wrong type.
absl::StatusOr<std::optional<int64_t>> OptionalInt(const GgufFile& file, std::string_view key) {
  if (file.Find(key) == nullptr) return std::optional<int64_t>();
  DUET_ASSIGN_OR_RETURN(int64_t value, file.GetInt(key));
  return std::optional<int64_t>(value);
}

absl::StatusOr<std::optional<bool>> OptionalBool(const GgufFile& file, std::string_view key) {
  if (file.Find(key) == nullptr) return std::optional<bool>();
  DUET_ASSIGN_OR_RETURN(bool value, file.GetBool(key));
  return std::optional<bool>(value);
}

// Token ids in GGUF are unsigned (some writers use -1 for "none"); anything that is not a
// valid int32 becomes -1.
absl::StatusOr<int32_t> ReadTokenId(const GgufFile& file, std::string_view key) {
  DUET_ASSIGN_OR_RETURN(std::optional<int64_t> id, OptionalInt(file, key));
  if (!id.has_value() || *id < 0 || *id > std::numeric_limits<int32_t>::max()) return -1;
  return static_cast<int32_t>(*id);
}

// Parses "<0xXX>" (either hex case); -1 when `text` is not of that form.
int ParseByteToken(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  int value = 0;
  for (const char c : text.substr(3, 2)) {
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

std::string ReplaceAll(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

bool IsSpecialType(TokenType type) {
  return type == TokenType::kControl || type == TokenType::kUnknown ||
         type == TokenType::kUserDefined;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& file) {
  TokenizerVocab vocab;
  if (file.Find(kKeyModel) == nullptr) {
    return absl::NotFoundError(absl::StrCat("GGUF has no ", kKeyModel, " (no tokenizer)"));
  }
  DUET_ASSIGN_OR_RETURN(std::string model, file.GetString(kKeyModel));
  if (model == "llama") {
    vocab.kind = TokenizerKind::kSpm;
  } else if (model == "gpt2") {
    vocab.kind = TokenizerKind::kBpe;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unsupported tokenizer model '", model, "' (",
                                                   kKeyModel, "); supported: llama, gpt2"));
  }

  if (file.Find(kKeyTokens) == nullptr) {
    return absl::NotFoundError(absl::StrCat("GGUF has no ", kKeyTokens));
  }
  DUET_ASSIGN_OR_RETURN(vocab.tokens, file.GetStringArray(kKeyTokens));

  if (file.Find(kKeyScores) != nullptr) {
    DUET_ASSIGN_OR_RETURN(std::vector<double> scores, file.GetDoubleArray(kKeyScores));
    vocab.scores.assign(scores.begin(), scores.end());
  }
  if (file.Find(kKeyTokenType) != nullptr) {
    DUET_ASSIGN_OR_RETURN(std::vector<int64_t> types, file.GetIntArray(kKeyTokenType));
    vocab.token_types.reserve(types.size());
    for (const int64_t t : types) {
      // Unknown values are treated like llama.cpp does: as undefined (decoded as text).
      vocab.token_types.push_back(t >= 0 && t <= static_cast<int64_t>(TokenType::kByte)
                                      ? static_cast<TokenType>(t)
                                      : TokenType::kUndefined);
    }
  }
  if (vocab.kind == TokenizerKind::kBpe) {
    if (file.Find(kKeyMerges) == nullptr) {
      return absl::NotFoundError(absl::StrCat("BPE tokenizer has no ", kKeyMerges));
    }
    DUET_ASSIGN_OR_RETURN(vocab.merges, file.GetStringArray(kKeyMerges));
  }
  if (file.Find(kKeyPre) != nullptr) {
    DUET_ASSIGN_OR_RETURN(vocab.pre, file.GetString(kKeyPre));
  }

  DUET_ASSIGN_OR_RETURN(vocab.bos_id, ReadTokenId(file, kKeyBosId));
  DUET_ASSIGN_OR_RETURN(vocab.eos_id, ReadTokenId(file, kKeyEosId));
  DUET_ASSIGN_OR_RETURN(vocab.unk_id, ReadTokenId(file, kKeyUnkId));
  DUET_ASSIGN_OR_RETURN(vocab.pad_id, ReadTokenId(file, kKeyPadId));
  DUET_ASSIGN_OR_RETURN(vocab.eot_id, ReadTokenId(file, kKeyEotId));
  DUET_ASSIGN_OR_RETURN(vocab.eom_id, ReadTokenId(file, kKeyEomId));
  DUET_ASSIGN_OR_RETURN(vocab.add_bos, OptionalBool(file, kKeyAddBos));
  DUET_ASSIGN_OR_RETURN(vocab.add_eos, OptionalBool(file, kKeyAddEos));
  DUET_ASSIGN_OR_RETURN(vocab.add_space_prefix, OptionalBool(file, kKeyAddSpacePrefix));

  // Phi-3's Hugging Face tokenizer strips whitespace after its special tokens (except these
  // three); llama.cpp recognizes the model by name, as GGUF has no per-token flag for it.
  if (file.Find(kKeyName) != nullptr) {
    DUET_ASSIGN_OR_RETURN(std::string name, file.GetString(kKeyName));
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
      for (size_t id = 0; id < vocab.tokens.size(); ++id) {
        const std::string& text = vocab.tokens[id];
        const TokenType type =
            id < vocab.token_types.size() ? vocab.token_types[id] : TokenType::kNormal;
        if (IsSpecialType(type) && text != "<unk>" && text != "<s>" && text != "<|endoftext|>") {
          vocab.rstrip_ids.push_back(static_cast<int32_t>(id));
        }
      }
    }
  }
  return FromVocab(std::move(vocab));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocab(TokenizerVocab vocab) {
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  DUET_RETURN_IF_ERROR(tokenizer->Init(std::move(vocab)));
  return tokenizer;
}

Tokenizer::~Tokenizer() = default;

absl::Status Tokenizer::Init(TokenizerVocab vocab) {
  const size_t n = vocab.tokens.size();
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(kKeyTokens, " is empty"));
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(kKeyTokens, " has too many entries: ", n));
  }
  if (!vocab.scores.empty() && vocab.scores.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(kKeyScores, " has ", vocab.scores.size(),
                                                   " entries but ", kKeyTokens, " has ", n));
  }
  if (!vocab.token_types.empty() && vocab.token_types.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(kKeyTokenType, " has ", vocab.token_types.size(),
                                                   " entries but ", kKeyTokens, " has ", n));
  }

  kind_ = vocab.kind;
  pre_ = vocab.pre.empty() ? "default" : vocab.pre;
  texts_ = std::move(vocab.tokens);
  scores_ = vocab.scores.empty() ? std::vector<float>(n, 0.0f) : std::move(vocab.scores);
  types_ = vocab.token_types.empty() ? std::vector<TokenType>(n, TokenType::kNormal)
                                     : std::move(vocab.token_types);
  rstrip_.assign(n, false);
  for (const int32_t id : vocab.rstrip_ids) {
    if (!IsValidId(id)) {
      return absl::InvalidArgumentError(absl::StrCat("rstrip token id ", id, " is out of range"));
    }
    rstrip_[id] = true;
  }
  token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (!texts_[i].empty()) token_to_id_.emplace(texts_[i], static_cast<int32_t>(i));
  }

  bool default_add_bos = kind_ == TokenizerKind::kSpm;
  if (kind_ == TokenizerKind::kBpe) {
    DUET_ASSIGN_OR_RETURN(PreTokenizerSpec spec, PreTokenizerSpecFor(pre_));
    default_add_bos = spec.add_bos;
    ignore_merges_ = spec.ignore_merges;
    DUET_ASSIGN_OR_RETURN(pre_tokenizer_, PreTokenizer::Create(std::move(spec.patterns)));
    DUET_RETURN_IF_ERROR(InitBpe(vocab.merges));
  } else if (!vocab.merges.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKeyMerges, " is only meaningful for gpt2 (BPE) tokenizers"));
  }

  InitSpecialTokens(vocab);
  add_space_prefix_ = vocab.add_space_prefix.value_or(kind_ == TokenizerKind::kSpm);
  add_eos_ = vocab.add_eos.value_or(false);
  // An explicit request that cannot be honored is an error; a default quietly yields.
  add_bos_ = vocab.add_bos.value_or(default_add_bos && bos_id_ >= 0);
  if (add_bos_ && bos_id_ < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKeyAddBos, " is true but ", kKeyBosId, " is not set (or out of range)"));
  }
  if (add_eos_ && eos_id_ < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKeyAddEos, " is true but ", kKeyEosId, " is not set (or out of range)"));
  }

  byte_tokens_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    if (kind_ == TokenizerKind::kSpm) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      byte_tokens_[b] = FindToken(name);
      // Vocabs without byte tokens may still have the ASCII characters themselves.
      if (byte_tokens_[b] < 0 && b < 0x80) {
        byte_tokens_[b] = FindToken(std::string(1, static_cast<char>(b)));
      }
    } else {
      byte_tokens_[b] = FindToken(EncodeUtf8(ByteToUnicode(static_cast<uint8_t>(b))));
    }
  }

  InitSpecialMatcher();
  InitPieces();
  return absl::OkStatus();
}

void Tokenizer::InitSpecialTokens(const TokenizerVocab& vocab) {
  auto in_range = [&](int32_t id) { return IsValidId(id) ? id : -1; };
  const bool spm = kind_ == TokenizerKind::kSpm;
  // llama.cpp's SPM defaults, used only when the file names no id and the vocab has it.
  bos_id_ = in_range(vocab.bos_id >= 0 ? vocab.bos_id : (spm ? 1 : -1));
  eos_id_ = in_range(vocab.eos_id >= 0 ? vocab.eos_id : (spm ? 2 : -1));
  unk_id_ = in_range(vocab.unk_id >= 0 ? vocab.unk_id : (spm ? 0 : -1));
  pad_id_ = in_range(vocab.pad_id);
  eot_id_ = in_range(vocab.eot_id);
  eom_id_ = in_range(vocab.eom_id);
  if (eot_id_ < 0) {
    for (const std::string_view text : kEotTexts) {
      eot_id_ = FindToken(text);
      if (eot_id_ >= 0) break;
    }
  }
  if (eom_id_ < 0) eom_id_ = FindToken(kEomText);
}

void Tokenizer::InitSpecialMatcher() {
  special_node_token_.assign(1, -1);  // Node 0 is the root.
  special_first_byte_.fill(false);
  for (int32_t id = 0; id < vocab_size(); ++id) {
    const std::string& text = texts_[id];
    if (!IsSpecialType(types_[id]) || text.empty()) continue;
    int32_t node = 0;
    for (const char c : text) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
      auto [it, inserted] =
          special_edges_.emplace(key, static_cast<int32_t>(special_node_token_.size()));
      if (inserted) special_node_token_.push_back(-1);
      node = it->second;
    }
    if (special_node_token_[node] < 0) special_node_token_[node] = id;  // First id wins.
    special_first_byte_[static_cast<uint8_t>(text[0])] = true;
  }
}

void Tokenizer::InitPieces() {
  pieces_.resize(texts_.size());
  for (size_t id = 0; id < texts_.size(); ++id) {
    const std::string& text = texts_[id];
    const TokenType type = types_[id];
    const int byte = type == TokenType::kByte ? ParseByteToken(text) : -1;
    if (byte >= 0) {
      pieces_[id] = std::string(1, static_cast<char>(byte));
    } else if (IsSpecialType(type)) {
      pieces_[id] = text;
    } else if (kind_ == TokenizerKind::kSpm) {
      pieces_[id] = ReplaceAll(text, kSpmSpace, " ");
    } else {
      pieces_[id] = ByteLevelToBytes(text);
    }
  }
}

std::vector<Tokenizer::Fragment> Tokenizer::Partition(std::string_view text,
                                                      bool parse_special) const {
  std::vector<Fragment> fragments;
  size_t raw_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!special_first_byte_[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    // Longest allowed special token starting at `pos`.
    int32_t best_token = -1;
    size_t best_end = 0;
    int32_t node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(text[i]);
      const auto it = special_edges_.find(key);
      if (it == special_edges_.end()) break;
      node = it->second;
      const int32_t token = special_node_token_[node];
      if (token >= 0 && (parse_special || types_[token] == TokenType::kUserDefined)) {
        best_token = token;
        best_end = i + 1;
      }
    }
    if (best_token < 0) {
      ++pos;
      continue;
    }
    if (pos > raw_start) fragments.push_back({text.substr(raw_start, pos - raw_start), -1});
    fragments.push_back({std::string_view(), best_token});
    pos = best_end;
    if (rstrip_[best_token]) {
      while (pos < text.size() && std::isspace(static_cast<unsigned char>(text[pos]))) ++pos;
    }
    raw_start = pos;
  }
  if (raw_start < text.size()) fragments.push_back({text.substr(raw_start), -1});
  return fragments;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && add_bos_) out.push_back(bos_id_);
  bool after_special = true;
  for (const Fragment& fragment : Partition(text, parse_special)) {
    if (fragment.token >= 0) {
      out.push_back(fragment.token);
      after_special = true;
      continue;
    }
    if (kind_ == TokenizerKind::kSpm) {
      EncodeSpm(fragment.text, after_special, &out);
    } else {
      EncodeBpe(fragment.text, &out);
    }
    after_special = false;
  }
  if (add_special && add_eos_) out.push_back(eos_id_);
  return out;
}

std::string Tokenizer::TokenToPiece(int32_t id, bool render_special) const {
  if (!IsValidId(id)) return std::string();
  const TokenType type = types_[id];
  if (!render_special && (type == TokenType::kControl || type == TokenType::kUnknown)) {
    return std::string();
  }
  return pieces_[id];
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool render_special) const {
  std::string out;
  for (const int32_t id : ids) {
    if (!IsValidId(id)) continue;
    const TokenType type = types_[id];
    if (!render_special && (type == TokenType::kControl || type == TokenType::kUnknown)) continue;
    out.append(pieces_[id]);
  }
  return out;
}

bool Tokenizer::IsEndOfGeneration(int32_t id) const {
  return id >= 0 && (id == eos_id_ || id == eot_id_ || id == eom_id_);
}

const std::string& Tokenizer::TokenText(int32_t id) const {
  return IsValidId(id) ? texts_[id] : EmptyString();
}

TokenType Tokenizer::GetTokenType(int32_t id) const {
  return IsValidId(id) ? types_[id] : TokenType::kUndefined;
}

int32_t Tokenizer::FindToken(std::string_view text) const {
  const auto it = token_to_id_.find(text);
  return it == token_to_id_.end() ? -1 : it->second;
}

}  // namespace duet
