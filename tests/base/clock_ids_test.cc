#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "common/base/clock.h"
#include "common/base/ids.h"
#include "gtest/gtest.h"

namespace duet {
namespace {

TEST(ClockTest, FakeClockMovesOnlyWhenAdvanced) {
  FakeClock clock;
  const absl::Time t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(absl::Milliseconds(250));
  EXPECT_EQ(clock.Now() - t0, absl::Milliseconds(250));
}

TEST(ClockTest, RealClockIsMonotonic) {
  const absl::Time a = Clock::Real()->Now();
  const absl::Time b = Clock::Real()->Now();
  EXPECT_LE(a, b);
}

TEST(IdsTest, StrongIdsCompareHashAndPrint) {
  const RequestId a("r-1");
  const RequestId b("r-2");
  EXPECT_NE(a, b);
  EXPECT_LT(a, b);
  absl::flat_hash_set<RequestId> set = {a, b, RequestId("r-1")};
  EXPECT_EQ(set.size(), 2u);
  std::ostringstream os;
  os << BlockId(42);
  EXPECT_EQ(os.str(), "42");
  EXPECT_EQ(NodeId("decode-0").ToString(), "decode-0");
}

}  // namespace
}  // namespace duet
