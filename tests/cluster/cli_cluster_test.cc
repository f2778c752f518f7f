// `duet cluster` and `duet client` as a user runs them: the one-shot --prompt mode, the serving
// mode stopped with SIGTERM / SIGINT, a client's stream and its error for a bad request, and
// usage errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

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
