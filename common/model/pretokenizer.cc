#include "common/model/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <initializer_list>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/model/unicode.h"

namespace duet {
namespace {

// The patterns below are the original `tokenizer.json` regexes of each model family, written
// with \x{...} escapes so this file stays ASCII. Where llama.cpp rewrites a pattern because
// std::regex lacks a feature (case-insensitive groups, \p{Lu} and friends), PCRE2 runs the
// original.

// GPT-2 and most byte-level BPE models since.
constexpr const char* kGpt2 =
    R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)re";

// Llama 3 (and ChatGLM 4, DBRX, Smaug).
constexpr const char* kLlama3 =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// Qwen 2: Llama 3's pattern with single digits.
constexpr const char* kQwen2 =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// Mistral's Tekken.
constexpr const char* kTekken =
    R"re([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// o200k (GPT-4o, Llama 4).
constexpr const char* kGpt4o =
    R"re([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// CJK Unified Ideographs U+4E00..U+9FA5, then U+0800..U+4E00 and Hangul, as DeepSeek writes it.
constexpr const char* kDeepseekCjk =
    R"re([\x{4E00}-\x{9FA5}\x{0800}-\x{4E00}\x{AC00}-\x{D7FF}]+)re";

// DeepSeek LLM's letter class is an explicit list of cased-letter ranges in its tokenizer.json
// (the code points of \p{Lu}, \p{Ll} and \p{Lt} in the Unicode version it was written
// against). It is kept verbatim, not replaced by \p{L&}, because newer Unicode versions add
// letters that the model's own tokenizer does not match.
constexpr const char* kDeepseekLlmLetters =
    R"re(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293})re"
    R"re(\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A})re"
    R"re(\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556})re"
    R"re(\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF})re"
    R"re(\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D})re"
    R"re(\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D})re"
    R"re(\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4})re"
    R"re(\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4})re"
    R"re(\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124})re"
    R"re(\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F})re"
    R"re(\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4})re"
    R"re(\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F})re"
    R"re(\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17})re"
    R"re(\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3})re"
    R"re(\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF})re"
    R"re(\x{1E900}-\x{1E943}]+)re";

bool NameIn(std::string_view name, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Appends to `out` the pieces that `code` splits `piece` into: matches and the gaps between.
void SplitPiece(const pcre2_code* code, std::string_view piece, pcre2_match_data* match_data,
                std::vector<std::string_view>* out) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
  size_t gap_start = 0;  // Start of text not yet emitted.
  size_t search = 0;     // Where the next match attempt starts.
  while (search < piece.size()) {
    int rc = pcre2_match(code, subject, piece.size(), search, 0, match_data, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // Deeply nested backtracking can exhaust the JIT's small stack; the interpreter keeps its
      // backtracking state on the heap.
      rc = pcre2_match(code, subject, piece.size(), search, PCRE2_NO_JIT, match_data, nullptr);
    }
    if (rc < 0) break;  // No match (or a resource limit): the rest is one gap.
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data);
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (end <= begin) {
      // An empty match carries no text; resume one character later.
      if (begin >= piece.size()) break;
      search = begin + DecodeUtf8(piece.substr(begin)).length;
      continue;
    }
    if (begin > gap_start) out->push_back(piece.substr(gap_start, begin - gap_start));
    out->push_back(piece.substr(begin, end - begin));
    gap_start = end;
    search = end;
  }
  if (gap_start < piece.size()) out->push_back(piece.substr(gap_start));
}

}  // namespace

absl::StatusOr<PreTokenizerSpec> PreTokenizerSpecFor(std::string_view pre) {
  PreTokenizerSpec spec;
  if (pre.empty() || pre == "default") {
    spec.patterns = {R"re([\p{P}\$\+<=>\^~\|]+)re", kGpt2, R"re(\p{N}+)re", "[0-9][0-9][0-9]"};
  } else if (NameIn(pre, {"gpt-2", "phi-2", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de",
                          "jina-v1-en", "jina-v2-code", "roberta-bpe", "gigachat", "a.x-4.0",
                          "mellum", "modern-bert", "mpt", "olmo", "jais", "exaone4", "trillion",
                          "granite-docling"})) {
    spec.patterns = {kGpt2};
  } else if (NameIn(pre, {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                          "midm-2.0", "lfm2"})) {
    spec.patterns = {kLlama3};
    spec.ignore_merges = true;
    spec.add_bos = true;
  } else if (NameIn(pre, {"dbrx", "smaug-bpe", "chatglm-bpe", "glm4"})) {
    spec.patterns = {kLlama3};
  } else if (NameIn(pre, {"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan"})) {
    spec.patterns = {kQwen2};
  } else if (pre == "tekken") {
    spec.patterns = {kTekken};
    spec.ignore_merges = true;
    spec.add_bos = true;
  } else if (NameIn(pre, {"gpt-4o", "llama4"})) {
    spec.patterns = {kGpt4o};
  } else if (pre == "deepseek-llm") {
    spec.patterns = {
        "[\r\n]",
        kDeepseekLlmLetters,
        R"re(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)re",
        R"re(\s+$)re",
        kDeepseekCjk,
        R"re(\p{N}+)re"};
  } else if (pre == "deepseek-coder") {
    spec.patterns = {"[\r\n]", R"re(\s?\p{L}+)re", R"re(\s?\p{P}+)re", kDeepseekCjk,
                     R"re(\p{N})re"};
  } else if (pre == "deepseek-v3") {
    spec.patterns = {
        R"re(\p{N}{1,3})re", R"re([\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)re",
        R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re"};
  } else if (pre == "falcon") {
    spec.patterns = {R"re([\p{P}\$\+<=>\^~\|`]+)re", kGpt2, "[0-9][0-9][0-9]"};
  } else if (NameIn(pre, {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone",
                          "minerva-7b"})) {
    spec.patterns = {R"re(\p{N})re", kGpt2};
  } else if (NameIn(pre, {"poro-chat", "bloom", "gpt3-finnish"})) {
    spec.patterns = {
        R"re( ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{0964}\x{06D4}\x{060C})]+)re"};
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown pre-tokenizer type (tokenizer.ggml.pre): '", std::string(pre), "'"));
  }
  return spec;
}

struct PreTokenizer::Compiled {
  std::string pattern;
  pcre2_code* code = nullptr;

  ~Compiled() { pcre2_code_free(code); }
};

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(
    std::vector<std::string> patterns) {
  std::vector<std::unique_ptr<Compiled>> compiled;
  compiled.reserve(patterns.size());
  for (std::string& pattern : patterns) {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    // UTF + UCP: code points, with \s \d \w and \p{..} following Unicode. MATCH_INVALID_UTF:
    // ill-formed bytes in the subject are legal and simply never match. MULTILINE: `$` ends a
    // line, as in the Oniguruma (Ruby) syntax that Hugging Face tokenizers use.
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_MULTILINE, &error,
                      &error_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InvalidArgumentError(
          absl::StrCat("pre-tokenizer pattern does not compile at offset ", error_offset, ": ",
                       reinterpret_cast<const char*>(message), " (pattern: ", pattern, ")"));
    }
    // JIT is an optimization only: without it (unsupported CPU, no executable memory),
    // pcre2_match falls back to the interpreter.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    auto entry = std::make_unique<Compiled>();
    entry->pattern = std::move(pattern);
    entry->code = code;
    compiled.push_back(std::move(entry));
  }
  return std::unique_ptr<PreTokenizer>(new PreTokenizer(std::move(compiled)));
}

PreTokenizer::PreTokenizer(std::vector<std::unique_ptr<Compiled>> patterns)
    : patterns_(std::move(patterns)) {}

PreTokenizer::~PreTokenizer() = default;

std::vector<std::string_view> PreTokenizer::Split(std::string_view text) const {
  std::vector<std::string_view> pieces;
  if (text.empty()) return pieces;
  pieces.push_back(text);
  std::vector<std::string_view> next;
  for (const auto& pattern : patterns_) {
    next.clear();
    next.reserve(pieces.size() * 2);
    // Match data is per call, so concurrent Splits share only the immutable compiled code.
    pcre2_match_data* match_data = pcre2_match_data_create_from_pattern(pattern->code, nullptr);
    for (std::string_view piece : pieces) SplitPiece(pattern->code, piece, match_data, &next);
    pcre2_match_data_free(match_data);
    pieces.swap(next);
  }
  return pieces;
}

}  // namespace duet
