// "host:port" addresses as servers listen on and channels dial them.
#ifndef DUET_COMMON_RPC_ADDRESS_H_
#define DUET_COMMON_RPC_ADDRESS_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace duet::rpc {

struct HostPort {
  std::string host;  // "127.0.0.1", "localhost", "[::1]" (brackets kept)
  int port = 0;      // [0, 65535]
};

// Parses "host:port". INVALID_ARGUMENT naming the address when there is no ':', the host is
// empty, a bracketed host is unterminated, or the port is not a decimal number in [0, 65535].
absl::StatusOr<HostPort> ParseHostPort(std::string_view address);

// "host:port".
std::string FormatHostPort(const HostPort& host_port);

}  // namespace duet::rpc

#endif  // DUET_COMMON_RPC_ADDRESS_H_
