// Crash-loudly checks for common/spec's REQUIRES clauses: a violation is a caller bug (a
// mismatched shape, an out-of-range id), never bad user input, so it aborts with a message
// rather than emitting a wrong token.
#ifndef DUET_COMMON_SPEC_CHECK_H_
#define DUET_COMMON_SPEC_CHECK_H_

#include <string_view>

namespace duet::spec {

// Prints "duet::spec: <message>" to stderr and aborts. Call sites build the message only on
// failure: `if (!ok) Die(absl::StrCat(...));`.
[[noreturn]] void Die(std::string_view message);

}  // namespace duet::spec

#endif  // DUET_COMMON_SPEC_CHECK_H_
