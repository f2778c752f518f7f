// duet client --addr HOST:PORT --prompt TEXT [-n N] [sampling flags]
//
// Streams the completion's text from a running Duet router to stdout as it arrives, then one
// line of statistics to stderr (finish reason, token counts, time to first token, tokens/s).
// A failed request prints its gRPC status code and message and exits 1.
#include <cstdio>
#include <memory>

#include "absl/strings/str_format.h"
#include "common/rpc/channel.h"
#include "common/rpc/finish_reason.h"
#include "tools/cluster/generate_client.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/client_flags.h"

namespace duet::cli {

int RunClient(const Args& args) {
  const std::string kCmd = "duet client";
  std::string address;
  std::string prompt;
  ClientFlags flags;
  ArgParser parser(kCmd);
  parser.AddString("addr", &address, "the router's HOST:PORT", true);
  parser.AddString("prompt", &prompt, "prompt text", true, "p");
  AddClientFlags(parser, &flags);
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;
  if (std::string problem = CheckClientFlags(flags); !problem.empty()) {
    return UsageError(kCmd, problem);
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(address);
  if (!channel.ok()) return UsageError(kCmd, absl::StrCat("--addr: ", channel.status().message()));
  auto stub = v1::Duet::NewStub(*channel);

  cluster::GenerateOptions options;
  if (flags.timeout_s > 0) options.timeout = absl::Seconds(flags.timeout_s);
  options.on_message = [](const v1::GenerateResponse& message) {
    std::fwrite(message.text().data(), 1, message.text().size(), stdout);
    std::fflush(stdout);
    return true;
  };
  const cluster::GenerateResult result =
      cluster::Generate(*stub, MakeGenerateRequest(parser, flags, prompt), options);
  if (!result.text.empty()) std::printf("\n");
  if (!result.status.ok()) {
    std::fprintf(stderr, "%s: request %s failed: %s: %s\n", kCmd.c_str(),
                 result.request_id.empty() ? "(no id)" : result.request_id.c_str(),
                 absl::StatusCodeToString(result.status.code()).c_str(),
                 std::string(result.status.message()).c_str());
    return kExitRuntimeError;
  }
  const double decode_s = result.token_ms.size() > 1
                              ? (result.token_ms.back() - result.token_ms.front()) / 1000.0
                              : 0.0;
  std::fprintf(stderr,
               "[%s: %s, %lld prompt + %lld completion tokens, first token %.1f ms, "
               "%.2f tokens/s after it, %.1f ms in all]\n",
               result.request_id.c_str(), rpc::FinishReasonName(result.finish_reason),
               static_cast<long long>(result.usage.prompt_tokens()),
               static_cast<long long>(result.usage.completion_tokens()), result.ttft_ms,
               decode_s > 0 ? static_cast<double>(result.token_ms.size() - 1) / decode_s : 0.0,
               result.total_ms);
  return 0;
}

}  // namespace duet::cli
