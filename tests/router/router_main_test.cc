// The duet-router executable as a real process: the "listening on" line, serving, graceful exit
// on SIGTERM, and one error line with exit code 2 for bad flags or configs.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model/shapes.h"
#include "common/model/synthetic_model.h"
#include "common/rpc/channel.h"
#include "duet/v1/duet.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/base/child_process.h"

namespace duet::router {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::StartsWith;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// duet-router as a child process, stderr in a file.
class Child : public duet::testing::Process {
 public:
  Child(const std::vector<std::string>& args, const fs::path& stderr_path)
      : Process(WithBinary(args), stderr_path.string()) {}

 private:
  static std::vector<std::string> WithBinary(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {DUET_ROUTER_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
};

class RouterMainTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // gRPC's server shutdown waits for client connections to close, and an idle client in this
    // process reads the server's GOAWAY only at its backup poll (default every 5 s).
    setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "50", /*overwrite=*/1);
    dir_ = new fs::path(fs::temp_directory_path() /
                        absl::StrCat("duet_router_main_test_", ::getpid()));
    fs::create_directories(*dir_);
    SyntheticModelOptions options;
    options.shape = *FindShape("tiny");
    options.weight_type = GgmlType::kF32;
    ASSERT_TRUE(WriteSyntheticModel(options, ModelPath()).ok());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static std::string ModelPath() { return (*dir_ / "tiny.gguf").string(); }
  static fs::path StderrPath() { return *dir_ / "stderr"; }

  // Runs the router to completion (for the invocations that exit at once).
  static int RunToExit(const std::vector<std::string>& args, std::string* err) {
    Child child(args, StderrPath());
    const int code = child.Wait();
    *err = ReadFile(StderrPath());
    return code;
  }

  static fs::path* dir_;
};

fs::path* RouterMainTest::dir_ = nullptr;

TEST_F(RouterMainTest, ServesUntilSigtermThenExitsZero) {
  Child child({"--model", ModelPath(), "--port", "0", "--log-level", "warn"}, StderrPath());
  const std::string line = child.ReadLine();
  ASSERT_THAT(line, MatchesRegex("listening on 127\\.0\\.0\\.1:[0-9]+")) << ReadFile(StderrPath());
  const std::string address = line.substr(std::string("listening on ").size());

  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(address);
  ASSERT_TRUE(channel.ok());
  EXPECT_EQ(
      rpc::CheckHealth(*channel, "duet.v1.Duet", absl::Seconds(10)).value_or(rpc::ServingStatus()),
      grpc::health::v1::HealthCheckResponse::SERVING);
  auto stub = duet::v1::Duet::NewStub(*channel);
  duet::v1::ListModelsResponse models;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->ListModels(&context, {}, &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), "tiny");

  child.Signal(SIGTERM);
  EXPECT_EQ(child.Wait(), 0) << ReadFile(StderrPath());
  EXPECT_EQ(child.ReadLine(), "");  // nothing else on stdout
}

TEST_F(RouterMainTest, ConfigFileAndOverrides) {
  const fs::path config = *dir_ / "cluster.pbtxt";
  std::ofstream(config) << "model_path: \"" << ModelPath() << "\"\nmodel_id: \"storyteller\"\n"
                        << "router { port: 1 default_max_tokens: 8 }\n";
  Child child({"--config", config.string(), "--set", "router.port=0", "--log-level", "off"},
              StderrPath());
  const std::string line = child.ReadLine();
  ASSERT_THAT(line, StartsWith("listening on 127.0.0.1:")) << ReadFile(StderrPath());
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      rpc::CreateChannel(line.substr(std::string("listening on ").size()));
  ASSERT_TRUE(channel.ok());
  auto stub = duet::v1::Duet::NewStub(*channel);
  duet::v1::ListModelsResponse models;
  grpc::ClientContext context;
  context.set_wait_for_ready(true);
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  ASSERT_TRUE(stub->ListModels(&context, {}, &models).ok());
  EXPECT_EQ(models.models(0).id(), "storyteller");
  child.Signal(SIGINT);
  EXPECT_EQ(child.Wait(), 0);
}

TEST_F(RouterMainTest, BadFlagsGiveOneErrorLineAndExitTwo) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const fs::path bad_config = *dir_ / "bad.pbtxt";
  std::ofstream(bad_config) << "router { prot: 1 }\n";
  const Case cases[] = {
      {{"--model", ModelPath(), "--bogus"}, "bogus"},
      {{"--port", "0"}, "--model FILE is required"},
      {{"--model", ModelPath(), "--port", "70000"}, "--port must be in [0, 65535], got 70000"},
      {{"--model", ModelPath(), "--port", "abc"}, "port"},
      {{"--model", ModelPath(), "--log-level", "loud"}, "--log-level must be one of"},
      {{"--model", ModelPath(), "--config", bad_config.string()}, "bad.pbtxt:1:"},
      {{"--model", ModelPath(), "--config", (*dir_ / "missing.pbtxt").string()}, "missing.pbtxt"},
      {{"--model", ModelPath(), "--set", "router.nope=1"}, "router.nope"},
      {{"--model", ModelPath(), "--set", "heartbeat_timeout_ms=10"},
       "heartbeat_timeout_ms (10) must be > heartbeat_interval_ms (1000)"},
      {{"--model", ModelPath(), "--set", "router.routing_policy=random"},
       "router.routing_policy 'random' is not one of: cache_aware, least_load, round_robin"},
      {{"--model", ModelPath(), "--set", "router.cache_overlap_weight=0"},
       "router.cache_overlap_weight must be > 0, got 0"},
  };
  for (const Case& c : cases) {
    std::string err;
    EXPECT_EQ(RunToExit(c.args, &err), 2) << absl::StrJoin(c.args, " ") << ": " << err;
    EXPECT_THAT(err, StartsWith("duet-router: ")) << absl::StrJoin(c.args, " ");
    EXPECT_THAT(err, HasSubstr(c.message)) << absl::StrJoin(c.args, " ");
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  }
}

TEST_F(RouterMainTest, UnreadableModelExitsOne) {
  std::string err;
  const std::string missing = (*dir_ / "missing.gguf").string();
  EXPECT_EQ(RunToExit({"--model", missing, "--port", "0"}, &err), 1);
  EXPECT_THAT(err, HasSubstr(missing));
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
}

}  // namespace
}  // namespace duet::router
