// Small helpers shared by the `duet` subcommands: uniform error lines and exit codes.
#ifndef DUET_TOOLS_DUET_CLI_UTIL_H_
#define DUET_TOOLS_DUET_CLI_UTIL_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/base/args.h"
#include "common/model/gguf.h"
#include "tools/duet/commands.h"

namespace duet::cli {

inline constexpr int kExitRuntimeError = 1;
inline constexpr int kExitUsage = 2;

// Prints "duet <command>: <message>" on stderr; returns kExitUsage for INVALID_ARGUMENT
// raised by argument parsing and kExitRuntimeError otherwise.
int Fail(const std::string& command, const absl::Status& status);
int UsageError(const std::string& command, const std::string& message);

// Parses args; on --help prints usage to stdout. Returns -1 to continue, else an exit code.
int ParseOrExit(ArgParser& parser, const Args& args);

// Opens and parses a GGUF file; errors name the path.
absl::StatusOr<std::shared_ptr<const GgufFile>> OpenModelFile(const std::string& path);

}  // namespace duet::cli

#endif  // DUET_TOOLS_DUET_CLI_UTIL_H_
