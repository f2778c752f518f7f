#include "common/rpc/text_config.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "duet/v1/config.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet::rpc {
namespace {

using ::testing::HasSubstr;

constexpr char kConfig[] = R"pb(
  # A two-node cluster.
  model_path: "/models/stories260K.gguf"
  router { port: 0 max_queued_requests: 8 }
  kv { block_size: 32 num_blocks: 1024 }
  nodes { node_id: "prefill-0" role: NODE_ROLE_PREFILL }
  nodes { node_id: "decode-0" role: NODE_ROLE_DECODE port: 7001 }
  backend: "cpu"
)pb";

TEST(TextConfigTest, ParsesAndKeepsSchemaDefaults) {
  duet::v1::ClusterConfig config;
  ASSERT_TRUE(ParseTextProto(kConfig, &config, "cluster.pbtxt").ok());
  EXPECT_EQ(config.model_path(), "/models/stories260K.gguf");
  EXPECT_EQ(config.router().port(), 0);
  EXPECT_TRUE(config.router().has_port());
  EXPECT_EQ(config.router().max_queued_requests(), 8);
  EXPECT_EQ(config.router().default_max_tokens(), 256);  // default
  EXPECT_EQ(config.kv().block_size(), 32);
  EXPECT_EQ(config.kv().pool_case(), duet::v1::KvConfig::kNumBlocks);
  EXPECT_EQ(config.kv().dtype(), duet::v1::KV_DTYPE_FP8_E4M3);  // default
  ASSERT_EQ(config.nodes_size(), 2);
  EXPECT_EQ(config.nodes(1).role(), duet::v1::NODE_ROLE_DECODE);
  EXPECT_EQ(config.nodes(1).port(), 7001);
  EXPECT_EQ(config.nodes(0).listen_address(), "127.0.0.1");  // default
  EXPECT_EQ(config.backend(), "cpu");
  EXPECT_EQ(config.lease_ms(), 10000);
  EXPECT_EQ(config.heartbeat_interval_ms(), 1000);
  EXPECT_EQ(config.heartbeat_timeout_ms(), 5000);
  EXPECT_EQ(config.scheduler().max_num_seqs(), 256);
  EXPECT_EQ(config.scheduler().max_num_batched_tokens(), 2048);
  EXPECT_EQ(config.scheduler().prefill_chunk_tokens(), 512);
  EXPECT_FALSE(config.has_scheduler());
}

TEST(TextConfigTest, UnknownFieldNamesFileLineAndColumn) {
  duet::v1::ClusterConfig config;
  config.set_model_path("kept");
  const absl::Status status =
      ParseTextProto("model_path: \"m.gguf\"\nkv {\n  blok_size: 8\n}\n", &config, "cluster.pbtxt");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("cluster.pbtxt:3:3: "));
  EXPECT_THAT(status.message(), HasSubstr("duet.v1.KvConfig"));
  EXPECT_THAT(status.message(), HasSubstr("blok_size"));
  EXPECT_EQ(config.model_path(), "kept");  // unchanged on error
}

TEST(TextConfigTest, BadValuesAndSyntaxAreErrors) {
  duet::v1::ClusterConfig config;
  absl::Status status = ParseTextProto("kv { block_size: \"big\" }", &config, "a.pbtxt");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("a.pbtxt:1:18: Expected integer"));

  status = ParseTextProto("kv { dtype: KV_DTYPE_FP9 }", &config, "b.pbtxt");
  EXPECT_THAT(status.message(), HasSubstr("b.pbtxt:1:13: "));
  EXPECT_THAT(status.message(), HasSubstr("KV_DTYPE_FP9"));

  status = ParseTextProto("router { port: 1 ", &config, "c.pbtxt");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("c.pbtxt:1:"));

  status = ParseTextProto("lease_ms: 1 lease_ms: 2", &config, "d.pbtxt");
  EXPECT_THAT(status.message(), HasSubstr("d.pbtxt:1:"));
  EXPECT_THAT(status.message(), HasSubstr("lease_ms"));

  // A tab advances the column to the next multiple of 8.
  status = ParseTextProto("\tnope: 1", &config, "e.pbtxt");
  EXPECT_THAT(status.message(), HasSubstr("e.pbtxt:1:9: "));
}

TEST(TextConfigTest, LoadsFilesWithPreciseErrors) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "duet_text_config_test";
  std::filesystem::create_directories(dir);
  const std::string good = (dir / "good.pbtxt").string();
  const std::string bad = (dir / "bad.pbtxt").string();
  std::ofstream(good) << kConfig;
  std::ofstream(bad) << "model_path: \"x\"\n\n    nonsense: 1\n";

  duet::v1::ClusterConfig config;
  ASSERT_TRUE(LoadTextProto(good, &config).ok());
  EXPECT_EQ(config.kv().block_size(), 32);

  absl::Status status = LoadTextProto(bad, &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr(bad + ":3:5: "));
  EXPECT_THAT(status.message(), HasSubstr("nonsense"));

  const std::string missing = (dir / "missing.pbtxt").string();
  status = LoadTextProto(missing, &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr(missing));

  status = LoadTextProto(dir.string(), &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("directory"));
  EXPECT_EQ(config.kv().block_size(), 32);  // still the good file's
}

TEST(TextConfigTest, OverridesSetScalarsByPath) {
  duet::v1::ClusterConfig config;
  ASSERT_TRUE(ParseTextProto(kConfig, &config).ok());
  const absl::Status status =
      ApplyOverrides({"kv.block_size=16", " router.port =50051", "kv.dtype=KV_DTYPE_F32",
                      "kv.dtype=2", "backend=vulkan", "lease_ms=2500", "kv.pool_bytes=1048576",
                      "speculation_default_on=true", "scheduler.max_num_seqs=8", "model_id=a=b"},
                     &config);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(config.kv().block_size(), 16);
  EXPECT_EQ(config.router().port(), 50051);
  EXPECT_EQ(config.kv().dtype(), duet::v1::KV_DTYPE_F16);  // by number, after the name
  EXPECT_EQ(config.backend(), "vulkan");
  EXPECT_EQ(config.lease_ms(), 2500);
  EXPECT_EQ(config.kv().pool_case(), duet::v1::KvConfig::kPoolBytes);  // the oneof switched
  EXPECT_EQ(config.kv().pool_bytes(), 1048576);
  EXPECT_TRUE(config.speculation_default_on());
  EXPECT_TRUE(config.has_scheduler());  // created on the way
  EXPECT_EQ(config.scheduler().max_num_seqs(), 8);
  EXPECT_EQ(config.model_id(), "a=b");  // everything after the first '='
}

TEST(TextConfigTest, BadOverridesNameThePathOrValueAndChangeNothing) {
  duet::v1::ClusterConfig config;
  ASSERT_TRUE(ParseTextProto(kConfig, &config).ok());
  const duet::v1::ClusterConfig before = config;
  struct Case {
    const char* spec;
    std::vector<std::string> expected;  // substrings of the message
  };
  const Case cases[] = {
      {"kv.blok_size=8",
       {"kv.blok_size=8", "duet.v1.KvConfig has no field 'blok_size'", "block_size"}},
      {"kv.block_size=abc", {"'abc' is not an int32", "duet.v1.KvConfig.block_size"}},
      {"kv.block_size=4294967296", {"not an int32"}},
      {"kv.block_size=", {"not an int32"}},
      {"lease_ms=1.5", {"not an int64"}},
      {"speculation_default_on=maybe", {"not a bool"}},
      {"kv.dtype=KV_DTYPE_FP9", {"KV_DTYPE_FP9", "KV_DTYPE_FP8_E4M3"}},
      {"kv.dtype=7", {"'7'", "duet.v1.KvDtype"}},
      {"kv=3", {"'kv' is a message", "block_size"}},
      {"nodes.port=1", {"'nodes' is a repeated field"}},
      {"backend.name=x", {"'backend' is a scalar", "'name'"}},
      {"lease_ms", {"expected path=value"}},
      {"=3", {"empty field path"}},
      {"kv..block_size=3", {"empty field name"}},
  };
  for (const Case& c : cases) {
    const absl::Status status = ApplyOverrides({"lease_ms=1", c.spec}, &config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.spec;
    EXPECT_THAT(status.message(), HasSubstr(std::string("override '") + c.spec + "'"));
    for (const std::string& part : c.expected) {
      EXPECT_THAT(status.message(), HasSubstr(part)) << c.spec;
    }
    EXPECT_EQ(config.SerializeAsString(), before.SerializeAsString()) << c.spec;
  }
}

}  // namespace
}  // namespace duet::rpc
