// Crash-loudly checks for common/spec (see check.h).
#include "common/spec/check.h"

#include <cstdio>
#include <cstdlib>

namespace duet::spec {

void Die(std::string_view message) {
  std::fprintf(stderr, "duet::spec: %.*s\n", static_cast<int>(message.size()), message.data());
  std::abort();
}

}  // namespace duet::spec
