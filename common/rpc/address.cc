#include "common/rpc/address.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace duet::rpc {

absl::StatusOr<HostPort> ParseHostPort(std::string_view address) {
  const std::string quoted = absl::StrCat("'", std::string(address), "'");
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("address ", quoted, " has no port; expected host:port"));
  }
  HostPort result;
  result.host = std::string(address.substr(0, colon));
  const std::string_view port = address.substr(colon + 1);
  if (result.host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("address ", quoted, " has no host; expected host:port"));
  }
  if (result.host.front() == '[' && result.host.back() != ']') {
    return absl::InvalidArgumentError(
        absl::StrCat("address ", quoted, " has an unterminated '[' (IPv6 is [addr]:port)"));
  }
  if (result.host.front() != '[' && result.host.find(':') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("address ", quoted, ": write an IPv6 host in brackets, [addr]:port"));
  }
  bool digits = !port.empty() && port.size() <= 5;
  for (char c : port) digits = digits && absl::ascii_isdigit(static_cast<unsigned char>(c));
  if (!digits || !absl::SimpleAtoi(std::string(port), &result.port) || result.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "address ", quoted, ": port '", std::string(port), "' is not a number in [0, 65535]"));
  }
  return result;
}

std::string FormatHostPort(const HostPort& host_port) {
  return absl::StrCat(host_port.host, ":", host_port.port);
}

}  // namespace duet::rpc
