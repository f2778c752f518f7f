#include "tools/cluster/generate_client.h"

#include <chrono>
#include <memory>

#include "common/rpc/status_convert.h"

namespace duet::cluster {

GenerateResult Generate(v1::Duet::Stub& stub, const v1::GenerateRequest& request,
                        const GenerateOptions& options) {
  GenerateResult result;
  grpc::ClientContext context;
  if (options.timeout != absl::InfiniteDuration()) {
    context.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoMilliseconds(options.timeout));
  }
  const auto start = std::chrono::steady_clock::now();
  auto elapsed_ms = [&start] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  };
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  v1::GenerateResponse message;
  bool cancelled = false;
  while (reader->Read(&message)) {
    const double now = elapsed_ms();
    if (result.tokens.empty() && message.token_ids_size() > 0) result.ttft_ms = now;
    result.request_id = message.request_id();
    for (int32_t id : message.token_ids()) {
      result.tokens.push_back(id);
      result.token_ms.push_back(now);
    }
    result.text += message.text();
    if (message.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result.finish_reason = message.finish_reason();
      result.usage = message.usage();
    }
    if (!cancelled && options.on_message && !options.on_message(message)) {
      context.TryCancel();
      cancelled = true;
    }
  }
  result.status = rpc::FromGrpcStatus(reader->Finish());
  result.total_ms = elapsed_ms();
  return result;
}

}  // namespace duet::cluster
