#include "common/base/args.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace duet {
namespace {

using ::testing::HasSubstr;

struct Flags {
  std::string model;
  int64_t n = 16;
  double temperature = 0.8;
  bool ids = false;
  std::vector<int64_t> lens;
  std::vector<std::string> stops;
  std::string file;
};

ArgParser MakeParser(Flags* f) {
  ArgParser p("duet test");
  p.AddString("model", &f->model, "model file", /*required=*/true);
  p.AddInt("max-tokens", &f->n, "tokens", "n");
  p.AddDouble("temperature", &f->temperature, "temperature");
  p.AddBool("ids", &f->ids, "ids only");
  p.AddIntList("prompt-len", &f->lens, "lengths");
  p.AddRepeated("stop", &f->stops, "stop string");
  p.AddPositional("FILE", &f->file, "a file", /*required=*/false);
  return p;
}

TEST(ArgParserTest, ParsesAllForms) {
  Flags f;
  ArgParser p = MakeParser(&f);
  ASSERT_TRUE(p.Parse({"--model", "m.gguf", "-n", "5", "--temperature=0.5", "--ids",
                       "--prompt-len", "128,512", "--stop", "a", "--stop", "b", "x.txt"})
                  .ok());
  EXPECT_EQ(f.model, "m.gguf");
  EXPECT_EQ(f.n, 5);
  EXPECT_DOUBLE_EQ(f.temperature, 0.5);
  EXPECT_TRUE(f.ids);
  EXPECT_EQ(f.lens, (std::vector<int64_t>{128, 512}));
  EXPECT_EQ(f.stops, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(f.file, "x.txt");
  EXPECT_TRUE(p.WasSet("ids"));
  EXPECT_FALSE(p.help_requested());
}

TEST(ArgParserTest, NegativeNumbersAreValues) {
  Flags f;
  ArgParser p = MakeParser(&f);
  ASSERT_TRUE(p.Parse({"--model", "m", "--temperature", "-1"}).ok());
  EXPECT_DOUBLE_EQ(f.temperature, -1.0);
}

TEST(ArgParserTest, ErrorsNameTheProblem) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const Case cases[] = {
      {{"--model", "m", "--bogus"}, "unknown flag '--bogus'"},
      {{"--model"}, "flag --model needs a value"},
      {{"-n", "3"}, "missing required flag --model"},
      {{"--model", "m", "-n", "three"}, "flag --max-tokens: expected an integer, got 'three'"},
      {{"--model", "m", "--temperature", "nan"}, "expected a finite number"},
      {{"--model", "m", "--prompt-len", "1,x"}, "expected comma-separated integers"},
      {{"--model", "m", "--ids=yes"}, "flag --ids takes no value"},
      {{"--model", "m", "--model", "n"}, "given more than once"},
      {{"--model", "m", "a", "b"}, "unexpected argument 'b'"},
  };
  for (const Case& c : cases) {
    Flags f;
    ArgParser p = MakeParser(&f);
    absl::Status s = p.Parse(c.args);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
    EXPECT_THAT(std::string(s.message()), HasSubstr("duet test"));
  }
}

TEST(ArgParserTest, HelpStopsParsingAndUsageListsFlags) {
  Flags f;
  ArgParser p = MakeParser(&f);
  ASSERT_TRUE(p.Parse({"--help", "--bogus"}).ok());
  EXPECT_TRUE(p.help_requested());
  std::string usage = p.Usage();
  EXPECT_THAT(usage, HasSubstr("--model VALUE (required)"));
  EXPECT_THAT(usage, HasSubstr("--max-tokens, -n VALUE"));
  EXPECT_THAT(usage, HasSubstr("[FILE]"));
}

}  // namespace
}  // namespace duet
