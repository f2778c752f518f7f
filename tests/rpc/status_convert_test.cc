#include "common/rpc/status_convert.h"

#include <string>

#include "absl/strings/cord.h"
#include "duet/v1/rpc_status.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet::rpc {
namespace {

// Every canonical code, in numeric order (absl and grpc number them the same).
constexpr absl::StatusCode kAllCodes[] = {
    absl::StatusCode::kOk,
    absl::StatusCode::kCancelled,
    absl::StatusCode::kUnknown,
    absl::StatusCode::kInvalidArgument,
    absl::StatusCode::kDeadlineExceeded,
    absl::StatusCode::kNotFound,
    absl::StatusCode::kAlreadyExists,
    absl::StatusCode::kPermissionDenied,
    absl::StatusCode::kResourceExhausted,
    absl::StatusCode::kFailedPrecondition,
    absl::StatusCode::kAborted,
    absl::StatusCode::kOutOfRange,
    absl::StatusCode::kUnimplemented,
    absl::StatusCode::kInternal,
    absl::StatusCode::kUnavailable,
    absl::StatusCode::kDataLoss,
    absl::StatusCode::kUnauthenticated,
};
constexpr grpc::StatusCode kAllGrpcCodes[] = {
    grpc::StatusCode::OK,
    grpc::StatusCode::CANCELLED,
    grpc::StatusCode::UNKNOWN,
    grpc::StatusCode::INVALID_ARGUMENT,
    grpc::StatusCode::DEADLINE_EXCEEDED,
    grpc::StatusCode::NOT_FOUND,
    grpc::StatusCode::ALREADY_EXISTS,
    grpc::StatusCode::PERMISSION_DENIED,
    grpc::StatusCode::RESOURCE_EXHAUSTED,
    grpc::StatusCode::FAILED_PRECONDITION,
    grpc::StatusCode::ABORTED,
    grpc::StatusCode::OUT_OF_RANGE,
    grpc::StatusCode::UNIMPLEMENTED,
    grpc::StatusCode::INTERNAL,
    grpc::StatusCode::UNAVAILABLE,
    grpc::StatusCode::DATA_LOSS,
    grpc::StatusCode::UNAUTHENTICATED,
};

TEST(StatusConvertTest, EveryCodeMapsToItsNamesakeBothWays) {
  for (size_t i = 0; i < std::size(kAllCodes); ++i) {
    EXPECT_EQ(ToGrpcCode(kAllCodes[i]), kAllGrpcCodes[i]) << i;
    EXPECT_EQ(FromGrpcCode(kAllGrpcCodes[i]), kAllCodes[i]) << i;
    EXPECT_EQ(static_cast<int>(kAllCodes[i]), static_cast<int>(i));
    EXPECT_EQ(static_cast<int>(kAllGrpcCodes[i]), static_cast<int>(i));
  }
}

TEST(StatusConvertTest, EveryErrorRoundTripsWithItsMessage) {
  for (size_t i = 1; i < std::size(kAllCodes); ++i) {
    const std::string message = "error #" + std::to_string(i) + ": \xc3\xa9 details";
    const absl::Status status(kAllCodes[i], message);
    const grpc::Status wire = ToGrpcStatus(status);
    EXPECT_EQ(wire.error_code(), kAllGrpcCodes[i]);
    EXPECT_EQ(wire.error_message(), message);
    EXPECT_TRUE(wire.error_details().empty()) << "no payloads, no details";
    EXPECT_EQ(FromGrpcStatus(wire), status);

    const grpc::Status from_wire(kAllGrpcCodes[i], message);
    const grpc::Status back = ToGrpcStatus(FromGrpcStatus(from_wire));
    EXPECT_EQ(back.error_code(), from_wire.error_code());
    EXPECT_EQ(back.error_message(), message);
  }
}

TEST(StatusConvertTest, OkAndOutOfRangeCodes) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  // grpc::StatusCode has no fixed underlying type, so only its declared values are valid.
  EXPECT_EQ(FromGrpcCode(grpc::StatusCode::DO_NOT_USE), absl::StatusCode::kUnknown);
  EXPECT_EQ(ToGrpcCode(static_cast<absl::StatusCode>(99)), grpc::StatusCode::UNKNOWN);
  const absl::Status odd = FromGrpcStatus(grpc::Status(grpc::StatusCode::DO_NOT_USE, "x"));
  EXPECT_EQ(odd.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(odd.message(), "x");
}

TEST(StatusConvertTest, RetryHintRoundTrips) {
  const absl::Status status = WithRetryAfter(
      absl::ResourceExhaustedError("queue full (256 requests)"), absl::Milliseconds(250));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryAfter(status), absl::Milliseconds(250));

  const grpc::Status wire = ToGrpcStatus(status);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(wire.error_message(), "queue full (256 requests)");
  EXPECT_EQ(GetRetryAfter(wire), absl::Milliseconds(250));
  const absl::Status back = FromGrpcStatus(wire);
  EXPECT_EQ(back, status);
  EXPECT_EQ(GetRetryAfter(back), absl::Milliseconds(250));

  // The details are google.rpc.Status / google.rpc.RetryInfo on the wire.
  duet::v1::RpcStatus details;
  ASSERT_TRUE(details.ParseFromString(wire.error_details()));
  EXPECT_EQ(details.code(), 8);
  EXPECT_EQ(details.message(), "queue full (256 requests)");
  ASSERT_EQ(details.details_size(), 1);
  EXPECT_EQ(details.details(0).type_url(), "type.googleapis.com/google.rpc.RetryInfo");
  duet::v1::RetryInfo info;
  ASSERT_TRUE(info.ParseFromString(details.details(0).value()));
  EXPECT_EQ(info.retry_delay().seconds(), 0);
  EXPECT_EQ(info.retry_delay().nanos(), 250'000'000);
}

TEST(StatusConvertTest, RetryHintEdgeCases) {
  EXPECT_EQ(GetRetryAfter(absl::UnavailableError("x")), std::nullopt);
  EXPECT_EQ(GetRetryAfter(grpc::Status(grpc::StatusCode::UNAVAILABLE, "x")), std::nullopt);
  EXPECT_TRUE(WithRetryAfter(absl::OkStatus(), absl::Seconds(1)).ok());
  EXPECT_EQ(GetRetryAfter(WithRetryAfter(absl::UnavailableError("x"), absl::Milliseconds(-5))),
            absl::ZeroDuration());
  // A later hint replaces an earlier one; seconds and nanos both count.
  const absl::Status twice = WithRetryAfter(
      WithRetryAfter(absl::UnavailableError("x"), absl::Seconds(9)), absl::Milliseconds(1500));
  EXPECT_EQ(GetRetryAfter(twice), absl::Milliseconds(1500));
  EXPECT_EQ(GetRetryAfter(ToGrpcStatus(twice)), absl::Milliseconds(1500));
  // A malformed hint reads as none.
  absl::Status garbage = absl::UnavailableError("x");
  garbage.SetPayload(kRetryInfoTypeUrl, absl::Cord("\xff\xff\xff"));
  EXPECT_EQ(GetRetryAfter(garbage), std::nullopt);
}

TEST(StatusConvertTest, OtherPayloadsTravelToo) {
  absl::Status status = absl::FailedPreconditionError("draining");
  status.SetPayload("type.example.com/duet.Test", absl::Cord(std::string("a\0b", 3)));
  const absl::Status back = FromGrpcStatus(ToGrpcStatus(status));
  EXPECT_EQ(back, status);
  EXPECT_EQ(back.GetPayload("type.example.com/duet.Test"), absl::Cord(std::string("a\0b", 3)));
}

TEST(StatusConvertTest, CorruptDetailsKeepCodeAndMessage) {
  const absl::Status status =
      WithRetryAfter(absl::ResourceExhaustedError("full"), absl::Seconds(1));
  grpc::Status wire = ToGrpcStatus(status);
  std::string truncated = wire.error_details();
  truncated.resize(truncated.size() - 3);
  for (const std::string& details : {truncated, std::string("\xff\xff\xff\xff")}) {
    const absl::Status back =
        FromGrpcStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "full", details));
    EXPECT_EQ(back.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(back.message(), "full");
    EXPECT_EQ(GetRetryAfter(back), std::nullopt);
  }
}

}  // namespace
}  // namespace duet::rpc
