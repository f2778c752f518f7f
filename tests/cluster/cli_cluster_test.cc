// `duet cluster` and `duet client` as a user runs them: the one-shot --prompt mode, the serving
// mode stopped with SIGTERM / SIGINT, a client's stream and its error for a bad request, and
// usage errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <sstream>
#include <string>
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
    const std::string line = cluster.ReadLine();
    ASSERT_THAT(line, StartsWith("listening on "));
    const std::string address = line.substr(std::string("listening on ").size());

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
  const std::string line = cluster.ReadLine();
  ASSERT_THAT(line, StartsWith("listening on "));
  const std::string address = line.substr(std::string("listening on ").size());
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
