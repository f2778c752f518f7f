#include "common/rpc/address.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet::rpc {
namespace {

using ::testing::HasSubstr;

TEST(AddressTest, ParsesHostAndPort) {
  absl::StatusOr<HostPort> hp = ParseHostPort("127.0.0.1:0");
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 0);
  hp = ParseHostPort("[::1]:65535");
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->host, "[::1]");
  EXPECT_EQ(hp->port, 65535);
  EXPECT_EQ(FormatHostPort({.host = "localhost", .port = 80}), "localhost:80");
}

TEST(AddressTest, RejectsMalformedAddresses) {
  for (const char* bad : {"localhost", ":80", "host:", "host:-1", "host:65536", "host:8o",
                          "[::1:80", "::1:80", "host: 80"}) {
    absl::StatusOr<HostPort> hp = ParseHostPort(bad);
    ASSERT_FALSE(hp.ok()) << bad;
    EXPECT_EQ(hp.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(hp.status().message(), HasSubstr(bad));
  }
}

}  // namespace
}  // namespace duet::rpc
