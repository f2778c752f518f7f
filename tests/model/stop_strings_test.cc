#include "common/model/stop_strings.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace duet {
namespace {

using ::testing::ElementsAre;

struct Streamed {
  std::vector<std::string> emits;  // One per Push.
  std::string text;                // All emits concatenated.
  bool stopped = false;
  std::string flushed;
};

Streamed Stream(const std::vector<std::string>& stops, const std::vector<std::string>& deltas) {
  StopStringMatcher matcher(stops);
  Streamed out;
  for (const std::string& delta : deltas) {
    StopStringMatcher::Result r = matcher.Push(delta);
    out.emits.push_back(r.emit);
    out.text += r.emit;
    out.stopped = r.stopped;
  }
  out.flushed = matcher.Flush();
  return out;
}

TEST(StopStringMatcherTest, NoStopStringsPassesTextThrough) {
  const Streamed s = Stream({}, {"Hello", ", ", "world"});
  EXPECT_THAT(s.emits, ElementsAre("Hello", ", ", "world"));
  EXPECT_FALSE(s.stopped);
  EXPECT_EQ(s.flushed, "");
}

TEST(StopStringMatcherTest, StopInsideOneDelta) {
  const Streamed s = Stream({"STOP"}, {"Hello STOP world"});
  EXPECT_THAT(s.emits, ElementsAre("Hello "));
  EXPECT_TRUE(s.stopped);
  EXPECT_EQ(s.flushed, "");
}

TEST(StopStringMatcherTest, StopSpanningManyDeltas) {
  const Streamed s = Stream({"STOP"}, {"He", "llo S", "T", "O", "P more"});
  EXPECT_THAT(s.emits, ElementsAre("He", "llo ", "", "", ""));
  EXPECT_TRUE(s.stopped);
}

TEST(StopStringMatcherTest, FalseStartIsReleased) {
  const Streamed s = Stream({"STOP"}, {"abc ST", "ART"});
  EXPECT_THAT(s.emits, ElementsAre("abc ", "START"));
  EXPECT_FALSE(s.stopped);
}

TEST(StopStringMatcherTest, PartialPrefixAtEndIsFlushed) {
  const Streamed s = Stream({"STOP"}, {"abc ", "STO"});
  EXPECT_THAT(s.emits, ElementsAre("abc ", ""));
  EXPECT_FALSE(s.stopped);
  EXPECT_EQ(s.flushed, "STO");
}

TEST(StopStringMatcherTest, StopAtStartEmitsNothing) {
  const Streamed s = Stream({"</s>"}, {"</s>tail"});
  EXPECT_THAT(s.emits, ElementsAre(""));
  EXPECT_TRUE(s.stopped);
}

TEST(StopStringMatcherTest, NothingAfterStop) {
  StopStringMatcher matcher({"x"});
  EXPECT_TRUE(matcher.Push("axb").stopped);
  const StopStringMatcher::Result r = matcher.Push("more text");
  EXPECT_EQ(r.emit, "");
  EXPECT_TRUE(r.stopped);
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopStringMatcherTest, OverlappingCandidates) {
  // "ab" is a prefix of "abc": it completes first.
  EXPECT_EQ(Stream({"abc", "ab"}, {"xabc"}).text, "x");
  EXPECT_EQ(Stream({"abc", "ab"}, {"xa", "bc"}).text, "x");
  // "bc" completes inside "abcd" before "abcd" does, whichever way the text is split.
  EXPECT_EQ(Stream({"abcd", "bc"}, {"abcd"}).text, "a");
  EXPECT_EQ(Stream({"abcd", "bc"}, {"abc", "d"}).text, "a");
  // Two stops ending at the same byte: the longer (earlier) one wins.
  EXPECT_EQ(Stream({"b", "ab"}, {"xab"}).text, "x");
  EXPECT_EQ(Stream({"b", "ab"}, {"xa", "b"}).text, "x");
}

TEST(StopStringMatcherTest, SelfOverlappingStop) {
  const Streamed s = Stream({"aab"}, {"a", "a", "a", "b"});
  EXPECT_THAT(s.emits, ElementsAre("", "", "a", ""));
  EXPECT_TRUE(s.stopped);
}

TEST(StopStringMatcherTest, HoldsBackOnlyWhatCouldStillMatch) {
  // The tail "xy" is a prefix of "xyz" (and "bxy" of nothing): hold exactly two bytes.
  const Streamed s = Stream({"xyz", "q"}, {"abxy"});
  EXPECT_THAT(s.emits, ElementsAre("ab"));
  EXPECT_EQ(s.flushed, "xy");
}

TEST(StopStringMatcherTest, EmptyStopStringsAreIgnored) {
  const Streamed s = Stream({"", "end"}, {"abc", "def"});
  EXPECT_THAT(s.emits, ElementsAre("abc", "def"));
  EXPECT_FALSE(s.stopped);
}

// ---- UTF-8 ----

TEST(StopStringMatcherTest, IncompleteCodePointIsHeld) {
  // "é" is C3 A9; the delta boundary falls inside it.
  const Streamed s = Stream({}, {"caf\xC3", "\xA9 ok"});
  EXPECT_THAT(s.emits, ElementsAre("caf", "\xC3\xA9 ok"));
}

TEST(StopStringMatcherTest, FourByteCodePointOneByteAtATime) {
  // U+1F600 is F0 9F 98 80.
  const Streamed s = Stream({"!"}, {"a\xF0", "\x9F", "\x98", "\x80", "b"});
  EXPECT_THAT(s.emits, ElementsAre("a", "", "", "\xF0\x9F\x98\x80", "b"));
}

TEST(StopStringMatcherTest, IncompleteCodePointAtEndIsFlushed) {
  const Streamed s = Stream({}, {"ab\xE6\x97"});
  EXPECT_THAT(s.emits, ElementsAre("ab"));
  EXPECT_EQ(s.flushed, "\xE6\x97");
}

TEST(StopStringMatcherTest, MultiByteStopString) {
  // Stop "日本" (E6 97 A5 E6 9C AC); the text ends in "日", a prefix of it.
  const Streamed held = Stream({"日本"}, {"今日は日"});
  EXPECT_THAT(held.emits, ElementsAre("今日は"));
  EXPECT_EQ(held.flushed, "日");
  const Streamed stopped = Stream({"日本"}, {"今日は日", "\xE6\x9C", "\xAC語"});
  EXPECT_THAT(stopped.emits, ElementsAre("今日は", "", ""));
  EXPECT_TRUE(stopped.stopped);
  EXPECT_EQ(Stream({"é"}, {"caf\xC3", "\xA9"}).text, "caf");
}

TEST(StopStringMatcherTest, HoldBackNeverSplitsACodePoint) {
  // A (malformed) stop starting with é's second byte would hold back from inside "é"; the
  // whole code point is held instead.
  const Streamed s = Stream({"\xA9z"}, {"caf\xC3\xA9"});
  EXPECT_THAT(s.emits, ElementsAre("caf"));
  EXPECT_EQ(s.flushed, "\xC3\xA9");
}

// ---- Against a brute-force reference on random streams ----

// The stopped-at text: cut before the stop that ends first, the longest on ties.
std::string ReferenceStop(const std::string& text, const std::vector<std::string>& stops,
                          bool* stopped) {
  for (size_t end = 1; end <= text.size(); ++end) {
    size_t best = 0;
    for (const std::string& stop : stops) {
      if (stop.size() <= end && stop.size() > best &&
          text.compare(end - stop.size(), stop.size(), stop) == 0) {
        best = stop.size();
      }
    }
    if (best > 0) {
      *stopped = true;
      return text.substr(0, end - best);
    }
  }
  *stopped = false;
  return text;
}

// Longest tail of `text` that is a proper prefix of a stop string.
size_t ReferenceHold(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& stop : stops) {
    for (size_t n = 1; n < stop.size() && n <= text.size(); ++n) {
      if (text.substr(text.size() - n) == std::string_view(stop).substr(0, n)) {
        hold = std::max(hold, n);
      }
    }
  }
  return hold;
}

TEST(StopStringMatcherTest, RandomStreamsMatchReference) {
  const std::vector<std::vector<std::string>> stop_sets = {
      {"ab", "abc", "bca", "ccc"},
      {"abcab", "cc", "bab"},
      {"aaaa", "abab"},
  };
  std::mt19937_64 rng(2024);
  for (const std::vector<std::string>& stops : stop_sets) {
    for (int iteration = 0; iteration < 500; ++iteration) {
      const size_t length = rng() % 40;
      std::string text;
      for (size_t i = 0; i < length; ++i) text += static_cast<char>('a' + rng() % 3);
      bool want_stopped = false;
      const std::string want = ReferenceStop(text, stops, &want_stopped);

      StopStringMatcher matcher(stops);
      std::string got;
      std::string seen;
      bool stopped = false;
      for (size_t pos = 0; pos < text.size() && !stopped;) {
        const size_t n = std::min<size_t>(text.size() - pos, 1 + rng() % 5);
        seen += text.substr(pos, n);
        pos += n;
        const StopStringMatcher::Result r = matcher.Push(text.substr(pos - n, n));
        got += r.emit;
        stopped = r.stopped;
        if (!stopped) {
          // Exactly the shortest unsafe tail is held back.
          ASSERT_EQ(got.size(), seen.size() - ReferenceHold(seen, stops)) << seen;
        }
      }
      if (!stopped) got += matcher.Flush();
      EXPECT_EQ(stopped, want_stopped) << text;
      EXPECT_EQ(got, want) << text;
    }
  }
}

}  // namespace
}  // namespace duet
