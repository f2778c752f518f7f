// duet tokenize --model FILE --text TEXT [--no-bos] [--parse-special] [--ids]
#include <cstdio>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/base/json.h"
#include "common/model/tokenizer.h"
#include "tools/duet/cli_util.h"

namespace duet::cli {

int RunTokenize(const Args& args) {
  const std::string kCmd = "duet tokenize";
  std::string model_path;
  std::string text;
  bool no_bos = false;
  bool parse_special = false;
  bool ids_only = false;
  ArgParser parser(kCmd);
  parser.AddString("model", &model_path, "GGUF file (model or vocabulary only)", true, "m");
  parser.AddString("text", &text, "text to tokenize", true);
  parser.AddBool("no-bos", &no_bos, "do not add BOS/EOS even if the vocabulary asks for them");
  parser.AddBool("parse-special", &parse_special,
                 "recognize special-token texts such as <s> in the input");
  parser.AddBool("ids", &ids_only, "print only the token ids, as one line");
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;

  absl::StatusOr<std::shared_ptr<const GgufFile>> file = OpenModelFile(model_path);
  if (!file.ok()) return Fail(kCmd, file.status());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(**file);
  if (!tokenizer.ok()) return Fail(kCmd, tokenizer.status());

  std::vector<int32_t> ids = (*tokenizer)->Encode(text, !no_bos, parse_special);
  if (ids_only) {
    std::printf("[%s]\n", absl::StrJoin(ids, ", ").c_str());
    return 0;
  }
  for (int32_t id : ids) {
    std::printf("%6d -> %s\n", id,
                JsonString((*tokenizer)->TokenToPiece(id, /*render_special=*/true)).c_str());
  }
  std::printf("%zu tokens\n", ids.size());
  return 0;
}

}  // namespace duet::cli
