// One streaming Generate call against a Duet router, with the client-side timings benchmarks
// and tests need (time to first token, the arrival time of every token). Shared by
// `duet client`, `duet cluster --prompt`, `duet bench --cluster` and the cluster tests.
#ifndef DUET_TOOLS_CLUSTER_GENERATE_CLIENT_H_
#define DUET_TOOLS_CLUSTER_GENERATE_CLIENT_H_

#include <grpcpp/client_context.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "duet/v1/duet.grpc.pb.h"

namespace duet::cluster {

struct GenerateResult {
  // The call's status (common/rpc FromGrpcStatus: codes and messages as the router sent them).
  absl::Status status;
  std::string request_id;
  std::vector<int32_t> tokens;
  std::string text;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  // Milliseconds from the call's start: to the first message carrying a token, to each token's
  // arrival (tokens of one message share a time), and to the end of the stream.
  double ttft_ms = 0;
  std::vector<double> token_ms;
  double total_ms = 0;
};

struct GenerateOptions {
  // Deadline of the call; infinite = none.
  absl::Duration timeout = absl::InfiniteDuration();
  // Called for every message; returning false cancels the call (TryCancel), after which the
  // result's status is CANCELLED.
  std::function<bool(const v1::GenerateResponse&)> on_message;
};

// Runs one Generate to its end. Never throws or hangs past the timeout.
GenerateResult Generate(v1::Duet::Stub& stub, const v1::GenerateRequest& request,
                        const GenerateOptions& options = {});

}  // namespace duet::cluster

#endif  // DUET_TOOLS_CLUSTER_GENERATE_CLIENT_H_
