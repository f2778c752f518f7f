// Conformance against llama.cpp's vocab test data (expected ids from Hugging Face tokenizers),
// read in place from ../shared/tokenizer. See that directory's README.md for the format.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model/gguf.h"
#include "common/model/tokenizer.h"
#include "common/model/unicode.h"
#include "gtest/gtest.h"

namespace duet {
namespace {

constexpr std::string_view kSeparator = "\n__ggml_vocab_test__\n";

struct VocabCase {
  std::string name;
  TokenizerKind kind;
};

// Names the case in test listings (ctest) instead of dumping its bytes.
void PrintTo(const VocabCase& c, std::ostream* os) { *os << c.name; }

std::string DataDir() { return std::string(DUET_SHARED_DIR) + "/tokenizer"; }

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  *out = buffer.str();
  return true;
}

// Splits the .inp text on the exact separator. The text after the last separator is one more
// case unless it is empty (the files end with a separator).
std::vector<std::string> SplitInputs(const std::string& text) {
  std::vector<std::string> cases;
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(kSeparator, pos);
    if (hit == std::string::npos) break;
    cases.push_back(text.substr(pos, hit - pos));
    pos = hit + kSeparator.size();
  }
  if (pos < text.size()) cases.push_back(text.substr(pos));
  return cases;
}

std::vector<std::vector<int32_t>> ParseOutputs(const std::string& text) {
  std::vector<std::vector<int32_t>> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream ids(line);
    std::vector<int32_t> row;
    int64_t id = 0;
    while (ids >> id) row.push_back(static_cast<int32_t>(id));
    out.push_back(std::move(row));
  }
  return out;
}

// Escapes control and non-ASCII bytes so failure messages stay readable in any terminal.
std::string Printable(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto b = static_cast<uint8_t>(c);
    if (b == '\n') {
      out += "\\n";
    } else if (b == '\t') {
      out += "\\t";
    } else if (b < 0x20 || b >= 0x7F) {
      out += absl::StrCat("\\x", absl::Hex(static_cast<unsigned>(b), absl::kZeroPad2));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// One vocab's files, loaded once and shared by the tests of that vocab.
struct LoadedVocab {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<std::string> inputs;
  std::vector<std::vector<int32_t>> expected;
};

// Loads `name` into `out`; fatal failures abort the calling test.
void LoadVocab(const std::string& name, LoadedVocab* out) {
  const std::string base = DataDir() + "/ggml-vocab-" + name + ".gguf";
  auto file = GgufFile::Open(base);
  ASSERT_TRUE(file.ok()) << file.status();
  out->file = std::move(file).value();
  auto tokenizer = Tokenizer::FromGguf(*out->file);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  out->tokenizer = std::move(tokenizer).value();
  std::string inp;
  std::string expected;
  ASSERT_TRUE(ReadFile(base + ".inp", &inp)) << base << ".inp";
  ASSERT_TRUE(ReadFile(base + ".out", &expected)) << base << ".out";
  out->inputs = SplitInputs(inp);
  out->expected = ParseOutputs(expected);
  ASSERT_EQ(out->inputs.size(), out->expected.size())
      << base << ": .inp and .out disagree on the number of cases";
}

class TokenizerConformanceTest : public ::testing::TestWithParam<VocabCase> {
 protected:
  void SetUp() override {
    if (!std::filesystem::is_directory(DataDir())) {
      GTEST_SKIP() << "tokenizer conformance data not found at " << DataDir()
                   << " (DUET_SHARED_DIR); skipping";
    }
    static auto* const cache = new std::map<std::string, std::unique_ptr<LoadedVocab>>();
    std::unique_ptr<LoadedVocab>& entry = (*cache)[GetParam().name];
    if (entry == nullptr) {
      auto loaded = std::make_unique<LoadedVocab>();
      LoadVocab(GetParam().name, loaded.get());
      if (HasFatalFailure()) return;
      entry = std::move(loaded);
    }
    tokenizer_ = entry->tokenizer.get();
    inputs_ = &entry->inputs;
    expected_ = &entry->expected;
  }

  const Tokenizer* tokenizer_ = nullptr;
  const std::vector<std::string>* inputs_ = nullptr;
  const std::vector<std::vector<int32_t>>* expected_ = nullptr;
};

TEST_P(TokenizerConformanceTest, MatchesReferenceIds) {
  EXPECT_EQ(tokenizer_->kind(), GetParam().kind);
  int mismatches = 0;
  std::string report;
  for (size_t i = 0; i < inputs_->size(); ++i) {
    const std::vector<int32_t> got =
        tokenizer_->Encode((*inputs_)[i], /*add_special=*/false, /*parse_special=*/false);
    if (got == (*expected_)[i]) continue;
    if (++mismatches <= 5) {
      absl::StrAppend(&report, "\n  case ", i, ": input \"", Printable((*inputs_)[i]),
                      "\"\n    expected: ", absl::StrJoin((*expected_)[i], " "),
                      "\n    got:      ", absl::StrJoin(got, " "));
    }
  }
  EXPECT_EQ(mismatches, 0) << GetParam().name << ": " << mismatches << " of " << inputs_->size()
                           << " cases mismatch; first ones:" << report;
  std::cout << "[ conformance ] " << GetParam().name << ": " << inputs_->size() - mismatches << "/"
            << inputs_->size() << " passed\n";
}

TEST_P(TokenizerConformanceTest, DecodeRestoresInput) {
  // Byte-level BPE is lossless. SPM adds one leading space (add_space_prefix) that decoding
  // keeps, and its byte fallback covers every character.
  const std::string prefix =
      GetParam().kind == TokenizerKind::kSpm && tokenizer_->add_space_prefix() ? " " : "";
  for (const std::string& input : *inputs_) {
    const std::vector<int32_t> ids = tokenizer_->Encode(input, false);
    EXPECT_EQ(Printable(tokenizer_->Decode(ids)),
              Printable(input.empty() ? input : prefix + input));
  }
}

TEST_P(TokenizerConformanceTest, LongInputIsFast) {
  // ~10k characters of mixed text (all cases repeated), and 10k-character runs that are a
  // single pre-token or merge sequence, or that make backtracking regexes work hardest.
  std::string mixed;
  while (DecodeUtf8ToCodePoints(mixed).size() < 10000) {
    for (const std::string& input : *inputs_) absl::StrAppend(&mixed, input, " ");
  }
  std::string cjk;
  std::string emoji;
  for (int i = 0; i < 10000; ++i) {
    cjk += "\xE4\xB8\xAD";        // U+4E2D
    emoji += "\xF0\x9F\xA6\x99";  // U+1F999
  }
  const std::vector<std::string> texts = {mixed,
                                          std::string(10000, 'a'),
                                          std::string(10000, ' ') + "a",
                                          std::string(10000, '\n'),
                                          std::string(10000, '7'),
                                          cjk,
                                          emoji};
  for (const std::string& text : texts) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tokenizer_->Encode(text, true);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // Generous for sanitizer builds; an optimized build takes a few milliseconds.
    EXPECT_LT(seconds, 1.0) << GetParam().name << ": \"" << Printable(text.substr(0, 20))
                            << "...\" (" << text.size() << " bytes) took " << seconds << " s";
    EXPECT_FALSE(ids.empty());
    std::cout << "[ timing ] " << GetParam().name << " " << Printable(text.substr(0, 8)) << ": "
              << seconds * 1e3 << " ms\n";
  }
}

INSTANTIATE_TEST_SUITE_P(Vocabs, TokenizerConformanceTest,
                         ::testing::Values(VocabCase{"llama-spm", TokenizerKind::kSpm},
                                           VocabCase{"phi-3", TokenizerKind::kSpm},
                                           VocabCase{"gpt-2", TokenizerKind::kBpe},
                                           VocabCase{"deepseek-coder", TokenizerKind::kBpe},
                                           VocabCase{"deepseek-llm", TokenizerKind::kBpe},
                                           VocabCase{"falcon", TokenizerKind::kBpe},
                                           VocabCase{"starcoder", TokenizerKind::kBpe},
                                           VocabCase{"mpt", TokenizerKind::kBpe},
                                           VocabCase{"refact", TokenizerKind::kBpe}),
                         [](const ::testing::TestParamInfo<VocabCase>& param_info) {
                           std::string name = param_info.param.name;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace duet
