// Tests of prompt-lookup drafting on hand-written token sequences.
#include "common/spec/ngram_proposer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace duet::spec {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::vector<int32_t> Propose(const std::vector<int32_t>& tokens, int64_t k, int32_t min_n = 1,
                             int32_t max_n = 4) {
  return ProposeNgram(tokens, k, NgramConfig{min_n, max_n});
}

TEST(NgramProposerTest, ProposesWhatFollowedTheSuffix) {
  // Last token 7 occurred at index 1, followed by 8 9 10.
  EXPECT_THAT(Propose({6, 7, 8, 9, 10, 7}, 3), ElementsAre(8, 9, 10));
}

TEST(NgramProposerTest, LongestSuffixWins) {
  // Suffix "1 2": "2" alone last occurred at index 5 (followed by 30), but "1 2" occurred at
  // index 0..1 (followed by 10), so the 2-gram's continuation wins.
  EXPECT_THAT(Propose({1, 2, 10, 11, 5, 2, 30, 1, 2}, 2), ElementsAre(10, 11));
}

TEST(NgramProposerTest, MostRecentOccurrenceWins) {
  EXPECT_THAT(Propose({4, 5, 1, 4, 6, 2, 4}, 2), ElementsAre(6, 2));
  // "3 4" ends at 2 (followed by 5) and at 5 (followed by 6); the later one wins.
  EXPECT_THAT(Propose({3, 4, 5, 3, 4, 6, 3, 4}, 1), ElementsAre(6));
}

TEST(NgramProposerTest, RepeatsThePeriodPastTheEndOfTheSequence) {
  // "2" occurred at index 1; 3 4 2 followed and reached the end, so the text repeats with
  // period 3. At most as many tokens as the sequence holds, however large k is.
  EXPECT_THAT(Propose({1, 2, 3, 4, 2}, 4), ElementsAre(3, 4, 2, 3));
  EXPECT_THAT(Propose({1, 2, 3, 4, 2}, 10), ElementsAre(3, 4, 2, 3, 4));
  EXPECT_THAT(Propose({1, 2, 3, 4, 2}, INT64_MAX), ElementsAre(3, 4, 2, 3, 4));
}

TEST(NgramProposerTest, NoMatchOrNothingToDoGivesNothing) {
  EXPECT_THAT(Propose({1, 2, 3, 4}, 3), IsEmpty());
  EXPECT_THAT(Propose({1}, 3), IsEmpty());
  EXPECT_THAT(Propose({}, 3), IsEmpty());
  EXPECT_THAT(Propose({1, 2, 1}, 0), IsEmpty());
  EXPECT_THAT(Propose({1, 2, 1}, -2), IsEmpty());
}

TEST(NgramProposerTest, RepeatedPattern) {
  // The 4-gram "2 3 1 2" ends at index 5, most recently; what follows runs into the suffix
  // and goes on with period 3.
  EXPECT_THAT(Propose({1, 2, 3, 1, 2, 3, 1, 2}, 5), ElementsAre(3, 1, 2, 3, 1));
  EXPECT_THAT(Propose({1, 2, 3, 1, 2, 3, 1, 2}, 2), ElementsAre(3, 1));
  // A run of one token: the longest earlier match ends one before the end (period 1).
  EXPECT_THAT(Propose({7, 7, 7, 7, 7, 7}, 3), ElementsAre(7, 7, 7));
}

TEST(NgramProposerTest, MinNRejectsShortMatches) {
  // Only a 1-gram matches ("3" at index 2); min_n 2 refuses it.
  EXPECT_THAT(Propose({1, 2, 3, 4, 5, 3}, 2, /*min_n=*/2), IsEmpty());
  EXPECT_THAT(Propose({1, 2, 3, 4, 5, 3}, 2, /*min_n=*/1), ElementsAre(4, 5));
}

TEST(NgramProposerTest, MaxNCapsTheMatchSoTheMostRecentShortMatchWins) {
  // "8 1 2" occurs at 0..2 (followed by 20); "1 2" also at 4..5 (followed by 21). With
  // max_n 2 both are 2-grams and the more recent one wins; with max_n 3 the 3-gram wins.
  const std::vector<int32_t> tokens = {8, 1, 2, 20, 1, 2, 21, 8, 1, 2};
  EXPECT_THAT(Propose(tokens, 1, 1, 2), ElementsAre(21));
  EXPECT_THAT(Propose(tokens, 1, 1, 3), ElementsAre(20));
}

TEST(NgramProposerTest, MatchesABruteForceReference) {
  // Literal reading of the contract: for n = max_n..min_n, the last earlier occurrence.
  auto reference = [](const std::vector<int32_t>& t, int64_t k, int32_t min_n, int32_t max_n) {
    const int64_t size = static_cast<int64_t>(t.size());
    for (int64_t n = max_n; n >= min_n; --n) {
      for (int64_t start = size - 1 - n; start >= 0; --start) {
        bool match = true;
        for (int64_t j = 0; j < n && match; ++j) match = t[start + j] == t[size - n + j];
        if (!match) continue;
        // What followed, extended by appending each proposed token and copying on.
        std::vector<int32_t> extended = t;
        const int64_t end = start + n;
        for (int64_t i = 0; i < std::min(k, size); ++i) extended.push_back(extended[end + i]);
        return std::vector<int32_t>(extended.begin() + size, extended.end());
      }
    }
    return std::vector<int32_t>{};
  };
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<int32_t> tokens(rng() % 40);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 3);
    const int32_t min_n = static_cast<int32_t>(1 + rng() % 3);
    const int32_t max_n = min_n + static_cast<int32_t>(rng() % 3);
    const int64_t k = static_cast<int64_t>(rng() % 6);
    EXPECT_EQ(Propose(tokens, k, min_n, max_n), reference(tokens, k, min_n, max_n))
        << "trial " << trial;
  }
}

TEST(NgramConfigTest, Validate) {
  EXPECT_TRUE(NgramConfig{}.Validate().ok());
  EXPECT_TRUE((NgramConfig{2, 2}.Validate().ok()));
  EXPECT_THAT(std::string((NgramConfig{0, 3}.Validate().message())), HasSubstr("min_n 0"));
  EXPECT_FALSE((NgramConfig{3, 2}.Validate().ok()));
}

TEST(NgramProposerDeathTest, InvalidConfigAborts) {
  EXPECT_DEATH(Propose({1, 2, 1}, 2, 3, 2), "min_n <= max_n");
}

}  // namespace
}  // namespace duet::spec
