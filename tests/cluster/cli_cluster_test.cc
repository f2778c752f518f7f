// `duet cluster` and `duet client` as a user runs them: the one-shot --prompt mode, the serving
// mode stopped with SIGTERM / SIGINT, a client's stream and its error for a bad request, and
// usage errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tests/base/child_process.h"
#include "tests/nodes/node_test_util.h"

namespace duet::cluster_test {
namespace {

using ::duet::testing::Process;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::vector<std::string> ClusterArgs(std::vector<std::string> extra) {
  std::vector<std::string> args = {DUET_BINARY,   "cluster", "--model",     nodes_test::TestModelFile(),
                                   "--port",      "0",       "--backend",   "cpu",
                                   "--kv-dtype",  "f32",     "--log-level", "error"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// The HOST:PORT of `cluster`'s first line, "listening on HOST:PORT"; "" (and a test failure)
// when the line says anything else.
std::string ListeningAddress(Process& cluster) {
  const std::string line = cluster.ReadLine();
  EXPECT_THAT(line, StartsWith("listening on "));
  return line.rfind("listening on ", 0) == 0 ? line.substr(std::string("listening on ").size())
                                             : "";
}

TEST(DuetClusterCliTest, PromptModeServesAndStops) {
  Process cluster(ClusterArgs({"--prefill", "2", "--decode", "1", "--prompt", "Once upon a time",
                               "--prompt", "The cat", "-n", "5", "--temperature", "0"}));
  const std::string out = cluster.ReadAll();
  EXPECT_EQ(cluster.Wait(), 0) << out;
  EXPECT_THAT(out, StartsWith("listening on 127.0.0.1:"));
  for (const char* name : {"router", "prefill-0", "prefill-1", "decode-0"}) {
    EXPECT_THAT(out, HasSubstr(name));
  }
  EXPECT_THAT(out, HasSubstr(">>> Once upon a time"));
  EXPECT_THAT(out, HasSubstr(">>> The cat"));
  EXPECT_THAT(out, HasSubstr(" prompt + 5 completion tokens"));
  EXPECT_THAT(out, HasSubstr("[length; "));
}

TEST(DuetClusterCliTest, ServesClientsUntilSigterm) {
  for (int signal : {SIGTERM, SIGINT}) {
    SCOPED_TRACE(signal);
    Process cluster(ClusterArgs({"--prefill", "1", "--decode", "1"}));
    const std::string address = ListeningAddress(cluster);
    ASSERT_FALSE(address.empty());

    Process client({DUET_BINARY, "client", "--addr", address, "--prompt", "Hello", "-n", "7",
                    "--temperature", "0", "--ignore-eos"});
    const std::string text = client.ReadAll();
    EXPECT_EQ(client.Wait(), 0);
    EXPECT_FALSE(text.empty());

    Process bad({DUET_BINARY, "client", "--addr", address, "--prompt", "Hello", "-n", "0"});
    EXPECT_EQ(bad.Wait(), 1);  // INVALID_ARGUMENT from the router, printed on stderr

    cluster.Signal(signal);
    EXPECT_EQ(cluster.Wait(), 0);
  }
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// duet loadgen against a running cluster: Poisson arrivals, a closed loop, a JSONL dataset, an
// SLO nobody meets (goodput 0), and its usage errors.
TEST(DuetClusterCliTest, LoadgenReportsLatencyThroughputAndGoodput) {
  Process cluster(ClusterArgs({"--prefill", "1", "--decode", "1"}));
  const std::string address = ListeningAddress(cluster);
  ASSERT_FALSE(address.empty());
  const std::string json = ::testing::TempDir() + "/loadgen.json";

  Process open_loop({DUET_BINARY, "loadgen", "--addr", address, "--rate", "20,40", "--requests",
                     "8", "--prompt-len", "8:16", "--output-len", "4", "--json", json});
  const std::string table = open_loop.ReadAll();
  EXPECT_EQ(open_loop.Wait(), 0) << table;
  EXPECT_THAT(table, HasSubstr("goodput: "));
  const std::string report = ReadText(json);
  EXPECT_THAT(report, HasSubstr("\"bench\": \"loadgen\""));
  EXPECT_THAT(report, HasSubstr("\"requests\": 8, \"failed\": 0"));
  EXPECT_THAT(report, HasSubstr("\"ttft_ms\": {\"mean\": "));
  EXPECT_THAT(report, HasSubstr("\"goodput_requests_per_s\": "));

  Process closed_loop({DUET_BINARY, "loadgen", "--addr", address, "--concurrency", "2",
                       "--requests", "6", "--output-len", "3", "--prompt-len", "5"});
  EXPECT_EQ(closed_loop.Wait(), 0);

  const std::string dataset = ::testing::TempDir() + "/loadgen.jsonl";
  {
    std::ofstream out(dataset);
    out << "{\"prompt\": \"Once upon a time\", \"output_len\": 3}\n\n"
        << "{\"prompt_len\": 12, \"max_tokens\": 2}\n";
  }
  Process from_file({DUET_BINARY, "loadgen", "--addr", address, "--rate", "10", "--requests",
                     "4", "--dataset", dataset});
  EXPECT_EQ(from_file.Wait(), 0);

  // An SLO no request can meet: every rate misses, goodput is 0.
  Process strict({DUET_BINARY, "loadgen", "--addr", address, "--rate", "10", "--goodput",
                  "--requests", "4", "--output-len", "3", "--prompt-len", "5", "--ttft-slo-ms",
                  "0.001", "--json", json});
  const std::string strict_table = strict.ReadAll();
  EXPECT_EQ(strict.Wait(), 0);
  EXPECT_THAT(strict_table, HasSubstr("goodput: 0 requests/s"));
  EXPECT_THAT(ReadText(json), HasSubstr("\"goodput_requests_per_s\": 0"));

  for (const std::vector<std::string>& bad : std::vector<std::vector<std::string>>{
           {"--rate", "1", "--concurrency", "2"},
           {"--prompt-len", "9:3", "--rate", "1"},
           {"--rate", "-1"},
           {"--rate", "1,2", "--goodput"},
           {"--rate", "1", "--dataset", "/nonexistent.jsonl"}}) {
    std::vector<std::string> argv = {DUET_BINARY, "loadgen", "--addr", address};
    argv.insert(argv.end(), bad.begin(), bad.end());
    Process p(argv);
    EXPECT_NE(p.Wait(), 0) << bad.front() << " " << bad.back();
  }
  cluster.Signal(SIGTERM);
  EXPECT_EQ(cluster.Wait(), 0);
}

// The number after the first `"key": ` at or after `from` in a JSON report; -1 if absent.
double JsonNumber(const std::string& json, const std::string& key, size_t from = 0) {
  const std::string quoted = "\"" + key + "\": ";
  const size_t at = json.find(quoted, from);
  return at == std::string::npos ? -1 : std::stod(json.substr(at + quoted.size()));
}

// Prefix-sharing conversations: 4 conversations of 2 turns over 2 shared prefixes of 10 tokens,
// each turn adding a 6-token suffix and generating 3. Turn 1's prompts are 10 + 6 tokens, turn
// 2's 16 + 3 + 6. Whether anything is cached depends on the nodes' prefix cache, so the test
// only bounds the cached totals.
TEST(DuetClusterCliTest, LoadgenSharedPrefixesAndTurns) {
  Process cluster(ClusterArgs({"--prefill", "1", "--decode", "1"}));
  const std::string address = ListeningAddress(cluster);
  ASSERT_FALSE(address.empty());
  const std::string json = ::testing::TempDir() + "/loadgen_prefix.json";

  Process loadgen(
      {DUET_BINARY,           "loadgen",  "--addr",         address, "--rate",       "20",
       "--requests",          "4",        "--prompt-len",   "6",     "--output-len", "3",
       "--shared-prefix-len", "10",       "--num-prefixes", "2",     "--turns",      "2",
       "--cache-salt",        "tenant-a", "--json",         json});
  const std::string table = loadgen.ReadAll();
  ASSERT_EQ(loadgen.Wait(), 0) << table;
  EXPECT_THAT(table, HasSubstr("cache_hit"));
  EXPECT_THAT(table, HasSubstr("ttft_mean"));
  EXPECT_THAT(table, HasSubstr("  turn 2: ttft_mean "));
  EXPECT_THAT(table, HasSubstr("goodput: "));

  const std::string report = ReadText(json);
  EXPECT_THAT(report, HasSubstr("\"shared_prefix_len\": 10, \"num_prefixes\": 2, \"turns\": 2, "
                                "\"cache_salt\": \"tenant-a\""));
  EXPECT_THAT(report, HasSubstr("\"conversations\": 4, \"requests\": 8, \"failed\": 0"));
  EXPECT_THAT(report, HasSubstr("\"ttft_ms\": {\"mean\": "));

  const size_t turn1 = report.find("{\"turn\": 1, ");
  const size_t turn2 = report.find("{\"turn\": 2, ");
  ASSERT_NE(turn1, std::string::npos) << report;
  ASSERT_NE(turn2, std::string::npos) << report;
  EXPECT_EQ(JsonNumber(report, "completed", turn1), 4);
  EXPECT_EQ(JsonNumber(report, "completed", turn2), 4);
  const double turn1_prompt = JsonNumber(report, "prompt_tokens", turn1);
  const double turn2_prompt = JsonNumber(report, "prompt_tokens", turn2);
  EXPECT_EQ(turn1_prompt, 4 * (10 + 6));
  EXPECT_EQ(turn2_prompt, 4 * (10 + 6 + 3 + 6));
  EXPECT_GT(turn2_prompt, turn1_prompt);
  EXPECT_EQ(JsonNumber(report, "prompt_tokens"), turn1_prompt + turn2_prompt);

  // Run totals come before "per_turn"; every turn has its own.
  for (const size_t from : {size_t{0}, turn1, turn2}) {
    const double prompt = JsonNumber(report, "prompt_tokens", from);
    const double cached = JsonNumber(report, "cached_prompt_tokens", from);
    const double hit_rate = JsonNumber(report, "prefix_cache_hit_rate", from);
    EXPECT_GE(cached, 0) << from;
    EXPECT_LE(cached, prompt) << from;
    EXPECT_GE(hit_rate, 0) << from;
    EXPECT_LE(hit_rate, 1) << from;
    EXPECT_NEAR(hit_rate, cached / prompt, 1e-6) << from;
  }

  // With the prefixes warmed up (and the nodes' prefix cache on, the default), every measured
  // request finds its 2-block shared prefix cached on the one prefill node.
  const std::string warm_json = ::testing::TempDir() + "/loadgen_warm.json";
  Process warm({DUET_BINARY, "loadgen", "--addr", address, "--concurrency", "1", "--requests", "4",
                "--prompt-len", "5", "--output-len", "2", "--shared-prefix-len", "32",
                "--num-prefixes", "2", "--warmup", "2", "--json", warm_json});
  const std::string warm_table = warm.ReadAll();
  ASSERT_EQ(warm.Wait(), 0) << warm_table;
  const std::string warm_report = ReadText(warm_json);
  EXPECT_THAT(warm_report, HasSubstr("\"warmup\": 2"));
  EXPECT_EQ(JsonNumber(warm_report, "prompt_tokens"), 4 * (32 + 5));
  EXPECT_EQ(JsonNumber(warm_report, "cached_prompt_tokens"), 4 * 32);

  // A shared prefix longer than the model's context: caught before anything is sent.
  const std::string err = ::testing::TempDir() + "/loadgen_prefix.err";
  Process too_long({DUET_BINARY, "loadgen", "--addr", address, "--rate", "1", "--shared-prefix-len",
                    "100000000"},
                   err);
  EXPECT_EQ(too_long.Wait(), 2);
  EXPECT_THAT(ReadText(err), HasSubstr("--shared-prefix-len 100000000 leaves no room in the "
                                       "context length "));
  cluster.Signal(SIGTERM);
  EXPECT_EQ(cluster.Wait(), 0);
}

// Bad prefix-cache flags: usage errors (exit 2) with one precise line on stderr, before loadgen
// connects anywhere (nothing listens at the address).
TEST(DuetClusterCliTest, LoadgenRejectsBadPrefixCacheFlags) {
  const std::string err = ::testing::TempDir() + "/loadgen_flags.err";
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--shared-prefix-len", "-1"}, "--shared-prefix-len must be >= 0, got -1"},
      {{"--shared-prefix-len", "8", "--num-prefixes", "0"},
       "--num-prefixes must be in [1, 1000000], got 0"},
      {{"--shared-prefix-len", "8", "--num-prefixes", "-2"},
       "--num-prefixes must be in [1, 1000000], got -2"},
      {{"--turns", "0"}, "--turns must be in [1, 1000], got 0"},
      {{"--turns", "-3"}, "--turns must be in [1, 1000], got -3"},
      {{"--num-prefixes", "3"}, "--num-prefixes 3 needs --shared-prefix-len > 0"},
      {{"--dataset", "/nonexistent.jsonl", "--shared-prefix-len", "8"},
       "--shared-prefix-len cannot be combined with --dataset: it shapes random-token prompts"},
      {{"--dataset", "/nonexistent.jsonl", "--num-prefixes", "2"},
       "--num-prefixes cannot be combined with --dataset: it shapes random-token prompts"},
      {{"--dataset", "/nonexistent.jsonl", "--turns", "2"},
       "--turns cannot be combined with --dataset: it shapes random-token prompts"},
      {{"--warmup", "-1"}, "--warmup must be in [0, 100000], got -1"},
  };
  for (const auto& [flags, message] : cases) {
    SCOPED_TRACE(message);
    std::vector<std::string> argv = {DUET_BINARY,   "loadgen", "--addr",
                                     "127.0.0.1:1", "--rate",  "1"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    Process p(argv, err);
    EXPECT_EQ(p.Wait(), 2);
    EXPECT_EQ(ReadText(err), "duet loadgen: " + message + "\n");
  }
}

TEST(DuetClusterCliTest, UsageErrors) {
  const std::vector<std::vector<std::string>> bad = {
      ClusterArgs({"--decode", "0"}),
      ClusterArgs({"--prefill", "0"}),
      ClusterArgs({"--port", "70000"}),
      ClusterArgs({"--prefill", "-1"}),
      {DUET_BINARY, "cluster", "--port", "0"},  // no model
      {DUET_BINARY, "client", "--prompt", "x"},  // no --addr
      {DUET_BINARY, "client", "--addr", "nohostport", "--prompt", "x"},
  };
  for (const std::vector<std::string>& args : bad) {
    Process p(args);
    EXPECT_EQ(p.Wait(), 2) << args.back();
  }
  // A model file that does not exist: the router fails at startup, the cluster says so.
  Process missing({DUET_BINARY, "cluster", "--model", "/nonexistent/m.gguf", "--port", "0",
                   "--log-level", "off"});
  EXPECT_EQ(missing.Wait(), 1);
  // Nothing listens there: UNAVAILABLE, exit 1.
  Process unreachable({DUET_BINARY, "client", "--addr", "127.0.0.1:1", "--prompt", "x",
                       "--timeout-s", "5"});
  EXPECT_EQ(unreachable.Wait(), 1);
}

}  // namespace
}  // namespace duet::cluster_test
