#include "common/kv/reservations.h"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet::kv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

RequestId Req(const std::string& s) { return RequestId(s); }

class ReservationTableTest : public ::testing::Test {
 protected:
  ReservationTableTest() : pool_(16), table_(&pool_, &clock_) {}

  // Every block is free, reserved by the table, or claimed by a test (one reference each).
  void ExpectConsistent(int64_t claimed) {
    EXPECT_EQ(pool_.num_free() + table_.num_reserved_blocks() + claimed, pool_.num_blocks());
  }

  FakeClock clock_;
  BlockPool pool_;
  ReservationTable table_;
};

TEST_F(ReservationTableTest, ReserveThenClaimMovesOwnershipToTheCaller) {
  absl::StatusOr<Reservation> r = table_.Reserve(Req("r-1"), 4, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->reservation_id, "res-1");
  EXPECT_EQ(r->request_id, Req("r-1"));
  EXPECT_THAT(r->blocks, ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(r->expires_at, clock_.Now() + absl::Seconds(5));
  EXPECT_EQ(pool_.num_free(), 12);
  EXPECT_EQ(table_.num_reserved_blocks(), 4);
  ASSERT_NE(table_.Find("res-1"), nullptr);
  EXPECT_EQ(table_.FindByRequest(Req("r-1")), table_.Find("res-1"));
  EXPECT_EQ(table_.Find("res-2"), nullptr);
  EXPECT_EQ(table_.FindByRequest(Req("r-2")), nullptr);

  absl::StatusOr<std::vector<int32_t>> blocks = table_.Claim("res-1");
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, r->blocks);
  EXPECT_EQ(table_.num_reserved_blocks(), 0);
  EXPECT_EQ(table_.num_reservations(), 0);
  EXPECT_EQ(pool_.num_free(), 12);  // the caller holds them now
  EXPECT_EQ(table_.Find("res-1"), nullptr);
  EXPECT_EQ(table_.Claim("res-1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table_.Release("res-1").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table_.Touch("res-1").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(pool_.Release(*blocks).ok());
  EXPECT_EQ(pool_.num_free(), 16);
}

TEST_F(ReservationTableTest, IdsAreUniqueAndNeverReused) {
  absl::flat_hash_set<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<Reservation> r = table_.Reserve(Req(absl::StrCat("r-", i)), 1, absl::Seconds(1));
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(ids.insert(r->reservation_id).second);
    ASSERT_TRUE(table_.Release(r->reservation_id).ok());
  }
  EXPECT_EQ(ids.size(), 5u);
  ReservationTable prefixed(&pool_, &clock_, "decode-3/res-");
  EXPECT_EQ(prefixed.Reserve(Req("x"), 1, absl::Seconds(1))->reservation_id, "decode-3/res-1");
}

TEST_F(ReservationTableTest, LeaseExpiresAtItsEndAndFreesTheBlocks) {
  ASSERT_TRUE(table_.Reserve(Req("r-1"), 3, absl::Seconds(5)).ok());
  const absl::Time end = clock_.Now() + absl::Seconds(5);
  clock_.Advance(absl::Seconds(5) - absl::Nanoseconds(1));
  EXPECT_TRUE(table_.ExpireDue().empty());
  EXPECT_NE(table_.Find("res-1"), nullptr);
  clock_.Advance(absl::Nanoseconds(1));  // exactly at expires_at: expired
  std::vector<ExpiredReservation> expired = table_.ExpireDue();
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].request_id, Req("r-1"));
  EXPECT_EQ(expired[0].reservation_id, "res-1");
  EXPECT_EQ(expired[0].num_blocks, 3);
  EXPECT_EQ(expired[0].expired_at, end);
  EXPECT_EQ(pool_.num_free(), 16);
  EXPECT_EQ(table_.num_reservations(), 0);
  EXPECT_TRUE(table_.ExpireDue().empty());  // reported once
  EXPECT_EQ(table_.Touch("res-1").code(), absl::StatusCode::kNotFound);
}

TEST_F(ReservationTableTest, TouchExtendsTheLeaseFromNow) {
  ASSERT_TRUE(table_.Reserve(Req("r-1"), 2, absl::Seconds(5)).ok());
  clock_.Advance(absl::Seconds(4));
  ASSERT_TRUE(table_.Touch("res-1").ok());
  EXPECT_EQ(table_.Find("res-1")->expires_at, clock_.Now() + absl::Seconds(5));
  clock_.Advance(absl::Seconds(4));  // 8 s after Reserve, 4 s after Touch
  EXPECT_TRUE(table_.ExpireDue().empty());
  ASSERT_TRUE(table_.Touch("res-1").ok());
  clock_.Advance(absl::Seconds(5));
  EXPECT_EQ(table_.ExpireDue().size(), 1u);
  EXPECT_EQ(table_.Touch("unknown").code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(table_.Touch("res-1").message(), HasSubstr("no live KV reservation res-1"));
}

TEST_F(ReservationTableTest, LapsedButUnsweptReservationIsDeadExceptToReleaseAndExpireDue) {
  ASSERT_TRUE(table_.Reserve(Req("r-1"), 2, absl::Seconds(1)).ok());
  ASSERT_TRUE(table_.Reserve(Req("r-2"), 2, absl::Seconds(1)).ok());
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(table_.Touch("res-1").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table_.Claim("res-1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table_.Find("res-1"), nullptr);
  EXPECT_EQ(table_.FindByRequest(Req("r-1")), nullptr);
  EXPECT_EQ(table_.num_reserved_blocks(), 4);  // still held until swept
  ASSERT_TRUE(table_.Release("res-1").ok());   // the caller frees it itself
  std::vector<ExpiredReservation> expired = table_.ExpireDue();
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].reservation_id, "res-2");
  EXPECT_EQ(pool_.num_free(), 16);
}

TEST_F(ReservationTableTest, ExpiryNeverFreesClaimedBlocks) {
  ASSERT_TRUE(table_.Reserve(Req("r-1"), 3, absl::Seconds(1)).ok());
  ASSERT_TRUE(table_.Reserve(Req("r-2"), 5, absl::Seconds(1)).ok());
  absl::StatusOr<std::vector<int32_t>> claimed = table_.Claim("res-2");
  ASSERT_TRUE(claimed.ok());
  clock_.Advance(absl::Hours(1));
  std::vector<ExpiredReservation> expired = table_.ExpireDue();
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].reservation_id, "res-1");
  for (int32_t b : *claimed) EXPECT_EQ(pool_.ref_count(b), 1);
  EXPECT_EQ(pool_.num_free(), 11);
  ExpectConsistent(5);
}

TEST_F(ReservationTableTest, ResourceExhaustedLeavesStateUnchanged) {
  ASSERT_TRUE(table_.Reserve(Req("r-1"), 10, absl::Seconds(5)).ok());
  absl::StatusOr<Reservation> r = table_.Reserve(Req("r-2"), 7, absl::Seconds(5));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(),
              HasSubstr("request r-2 needs 7 blocks; the pool has 6 free of 16 (10 held by 1 "
                        "reservations)"));
  EXPECT_EQ(pool_.num_free(), 6);
  EXPECT_EQ(table_.num_reserved_blocks(), 10);
  EXPECT_EQ(table_.num_reservations(), 1);
  EXPECT_EQ(table_.FindByRequest(Req("r-2")), nullptr);
  // The request may try again, and a fitting reservation still succeeds.
  absl::StatusOr<Reservation> again = table_.Reserve(Req("r-2"), 6, absl::Seconds(5));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->reservation_id, "res-2");  // the failed call used no id
  EXPECT_EQ(pool_.num_free(), 0);
  ExpectConsistent(0);
}

TEST_F(ReservationTableTest, ExpiredLeasesAreReclaimedByTheNextReserve) {
  ASSERT_TRUE(table_.Reserve(Req("r-1"), 12, absl::Seconds(1)).ok());
  clock_.Advance(absl::Seconds(1));
  // r-1 lapsed: its blocks serve r-2, and r-1 may reserve again.
  ASSERT_TRUE(table_.Reserve(Req("r-2"), 10, absl::Seconds(1)).ok());
  ASSERT_TRUE(table_.Reserve(Req("r-1"), 2, absl::Seconds(1)).ok());
  std::vector<ExpiredReservation> expired = table_.ExpireDue();
  ASSERT_EQ(expired.size(), 1u);  // reported by ExpireDue although Reserve swept it
  EXPECT_EQ(expired[0].reservation_id, "res-1");
  EXPECT_EQ(expired[0].num_blocks, 12);
  ExpectConsistent(0);
}

TEST_F(ReservationTableTest, RejectsDuplicatesAndBadArguments) {
  ASSERT_TRUE(table_.Reserve(Req("r-1"), 2, absl::Seconds(1)).ok());
  absl::StatusOr<Reservation> dup = table_.Reserve(Req("r-1"), 2, absl::Seconds(1));
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(dup.status().message(), HasSubstr("request r-1 already holds KV reservation res-1"));
  EXPECT_EQ(table_.Reserve(Req(""), 2, absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table_.Reserve(Req("r-2"), 0, absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table_.Reserve(Req("r-2"), 1, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool_.num_free(), 14);
  ExpectConsistent(0);
}

TEST_F(ReservationTableTest, ExpireDueOrdersByLeaseEndThenId) {
  ASSERT_TRUE(table_.Reserve(Req("a"), 1, absl::Seconds(3)).ok());  // res-1, ends at +3
  ASSERT_TRUE(table_.Reserve(Req("b"), 1, absl::Seconds(1)).ok());  // res-2, ends at +1
  ASSERT_TRUE(table_.Reserve(Req("c"), 1, absl::Seconds(1)).ok());  // res-3, ends at +1
  clock_.Advance(absl::Seconds(10));
  std::vector<ExpiredReservation> expired = table_.ExpireDue();
  ASSERT_EQ(expired.size(), 3u);
  EXPECT_EQ(expired[0].reservation_id, "res-2");
  EXPECT_EQ(expired[1].reservation_id, "res-3");
  EXPECT_EQ(expired[2].reservation_id, "res-1");
}

TEST(ReservationTableLifetimeTest, DestructorReturnsHeldBlocks) {
  FakeClock clock;
  BlockPool pool(8);
  {
    ReservationTable table(&pool, &clock);
    ASSERT_TRUE(table.Reserve(Req("r-1"), 3, absl::Seconds(1)).ok());
    ASSERT_TRUE(table.Reserve(Req("r-2"), 2, absl::Seconds(1)).ok());
    EXPECT_EQ(pool.num_free(), 3);
  }
  EXPECT_EQ(pool.num_free(), 8);
}

// Random reserve/touch/claim/release/expire traffic with time passing: every block is always
// exactly one of free, reserved or claimed; nothing leaks and nothing is freed twice.
TEST(ReservationTableRandomTest, PoolCountsStayConsistent) {
  std::mt19937 rng(99);
  FakeClock clock;
  BlockPool pool(64);
  ReservationTable table(&pool, &clock);
  std::vector<std::string> ids;               // every id ever handed out
  std::vector<std::vector<int32_t>> claimed;  // sequences the "node" runs
  int64_t claimed_blocks = 0;
  int64_t expired_total = 0;
  for (int step = 0; step < 4000; ++step) {
    const int op = static_cast<int>(rng() % 6);
    if (op == 0 || op == 1) {
      const int64_t n = 1 + rng() % 12;
      const int64_t free_before = pool.num_free();
      absl::StatusOr<Reservation> r =
          table.Reserve(Req(absl::StrCat("r-", step)), n, absl::Milliseconds(10 + rng() % 200));
      if (r.ok()) {
        ids.push_back(r->reservation_id);
        EXPECT_EQ(static_cast<int64_t>(r->blocks.size()), n);
        for (int32_t b : r->blocks) EXPECT_EQ(pool.ref_count(b), 1);
      } else {
        EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
        EXPECT_LT(pool.num_free(), n);
        EXPECT_GE(pool.num_free(), free_before);  // only the sweep may have freed blocks
      }
    } else if (op == 2 && !ids.empty()) {
      (void)table.Touch(ids[rng() % ids.size()]);
    } else if (op == 3 && !ids.empty()) {
      absl::StatusOr<std::vector<int32_t>> got = table.Claim(ids[rng() % ids.size()]);
      if (got.ok()) {
        claimed_blocks += static_cast<int64_t>(got->size());
        claimed.push_back(*std::move(got));
      }
    } else if (op == 4 && !ids.empty()) {
      (void)table.Release(ids[rng() % ids.size()]);
    } else if (!claimed.empty()) {  // a running sequence ends
      const size_t i = rng() % claimed.size();
      ASSERT_TRUE(pool.Release(claimed[i]).ok());
      claimed_blocks -= static_cast<int64_t>(claimed[i].size());
      claimed.erase(claimed.begin() + static_cast<ptrdiff_t>(i));
    }
    clock.Advance(absl::Milliseconds(rng() % 20));
    if (rng() % 8 == 0) expired_total += static_cast<int64_t>(table.ExpireDue().size());
    ASSERT_EQ(pool.num_free() + table.num_reserved_blocks() + claimed_blocks, pool.num_blocks())
        << "step " << step;
    for (const auto& blocks : claimed) {
      for (int32_t b : blocks) ASSERT_EQ(pool.ref_count(b), 1);
    }
  }
  EXPECT_GT(expired_total, 10);
  EXPECT_GT(claimed_blocks + static_cast<int64_t>(ids.size()), 0);
}

}  // namespace
}  // namespace duet::kv
