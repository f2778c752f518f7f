// The one place that converts between absl::Status (every Duet library) and grpc::Status (the
// wire). Services return ToGrpcStatus(...) from handlers; clients turn a call's status back with
// FromGrpcStatus(...).
//
// Codes: absl::StatusCode and grpc::StatusCode name the same 17 canonical codes; each maps to
// its namesake both ways. A code outside them becomes UNKNOWN.
// Messages: carried unchanged. (An OK status has no message on either side.)
// Payloads: every absl::Status payload travels as a google.protobuf.Any (type URL = payload
// URL, value = payload bytes) in grpc::Status::error_details(), serialized as a message
// wire-compatible with google.rpc.Status (duet.v1.RpcStatus) -- gRPC's standard rich error
// model, sent in the "grpc-status-details-bin" trailer. Details that do not parse are dropped.
//
// Retry hint: WithRetryAfter() stores a google.rpc.RetryInfo-compatible payload under
// kRetryInfoTypeUrl, so it reaches the client through the payload mechanism above and any gRPC
// client that understands RetryInfo can read it.
//
// Thread safety: all functions are pure.
#ifndef DUET_COMMON_RPC_STATUS_CONVERT_H_
#define DUET_COMMON_RPC_STATUS_CONVERT_H_

#include <grpcpp/support/status.h>

#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace duet::rpc {

// The payload type URL (and Any type URL) of the retry hint.
inline constexpr char kRetryInfoTypeUrl[] = "type.googleapis.com/google.rpc.RetryInfo";

grpc::StatusCode ToGrpcCode(absl::StatusCode code);
absl::StatusCode FromGrpcCode(grpc::StatusCode code);

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// `status` with a hint that the caller may retry after `delay` (meant for RESOURCE_EXHAUSTED and
// UNAVAILABLE). Replaces an earlier hint. An OK status is returned unchanged (OK carries no
// payloads). REQUIRES: delay >= 0.
absl::Status WithRetryAfter(absl::Status status, absl::Duration delay);

// The hint WithRetryAfter() attached, or nullopt when there is none (or it is malformed or
// negative).
std::optional<absl::Duration> GetRetryAfter(const absl::Status& status);
std::optional<absl::Duration> GetRetryAfter(const grpc::Status& status);

}  // namespace duet::rpc

#endif  // DUET_COMMON_RPC_STATUS_CONVERT_H_
