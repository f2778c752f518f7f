#include "common/base/clock.h"

#include <chrono>

namespace duet {
namespace {

class SteadyClock : public Clock {
 public:
  absl::Time Now() const override {
    // steady_clock's epoch is arbitrary; map it onto absl::Time so durations subtract exactly.
    const auto since = std::chrono::steady_clock::now().time_since_epoch();
    return absl::UnixEpoch() + absl::FromChrono(since);
  }
};

}  // namespace

Clock* Clock::Real() {
  static SteadyClock* clock = new SteadyClock();
  return clock;
}

}  // namespace duet
