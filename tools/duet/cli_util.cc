#include "tools/duet/cli_util.h"

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace duet::cli {

int Fail(const std::string& command, const absl::Status& status) {
  std::fprintf(stderr, "%s: %s\n", command.c_str(), std::string(status.message()).c_str());
  return kExitRuntimeError;
}

int UsageError(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", command.c_str(), message.c_str());
  return kExitUsage;
}

int ParseOrExit(ArgParser& parser, const Args& args) {
  absl::Status status = parser.Parse(args);
  if (!status.ok()) {
    // The parser's messages already start with the command name.
    std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
    return kExitUsage;
  }
  if (parser.help_requested()) {
    std::fputs(parser.Usage().c_str(), stdout);
    return 0;
  }
  return -1;
}

absl::StatusOr<std::shared_ptr<const GgufFile>> OpenModelFile(const std::string& path) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  if (!file.ok()) {
    std::string message(file.status().message());
    if (message.find(path) == std::string::npos) message = absl::StrCat(path, ": ", message);
    return absl::Status(file.status().code(), message);
  }
  return std::shared_ptr<const GgufFile>(std::move(*file));
}

}  // namespace duet::cli
