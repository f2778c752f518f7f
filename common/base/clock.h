// Time behind an interface, so schedulers, leases and deadlines are tested with a fake clock.
//
// Clock::Real() is the process-wide monotonic clock (std::chrono::steady_clock). FakeClock only
// moves when a test advances it. Both are thread-safe.
#ifndef DUET_COMMON_BASE_CLOCK_H_
#define DUET_COMMON_BASE_CLOCK_H_

#include <atomic>
#include <cstdint>

#include "absl/time/time.h"

namespace duet {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic time; only differences are meaningful.
  virtual absl::Time Now() const = 0;
  // The real monotonic clock; never null, never destroyed.
  static Clock* Real();
};

class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch() + absl::Hours(1)) : now_ns_(ToNs(start)) {}
  absl::Time Now() const override { return absl::FromUnixNanos(now_ns_.load()); }
  void Advance(absl::Duration d) { now_ns_ += absl::ToInt64Nanoseconds(d); }
  void Set(absl::Time t) { now_ns_ = ToNs(t); }

 private:
  static int64_t ToNs(absl::Time t) { return absl::ToUnixNanos(t); }
  std::atomic<int64_t> now_ns_;
};

}  // namespace duet

#endif  // DUET_COMMON_BASE_CLOCK_H_
