// What a node process is told at startup: command-line flags over an optional text
// duet.v1.ClusterConfig (--config FILE). Shared by duet-prefill-node and duet-decode-node.
//
// Precedence, per setting: the flag when given, else the config file's field (for listen
// address, port, advertise address and Vulkan device: the config's `nodes` entry whose node_id
// is --node-id), whose proto2 defaults are also the defaults without a config file.
#ifndef DUET_NODE_NODE_OPTIONS_H_
#define DUET_NODE_NODE_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/metrics/metrics.h"
#include "common/engine/engine.h"
#include "common/kv/paged_kv.h"
#include "duet/v1/types.pb.h"
#include "node/speculator.h"

namespace duet::node {

struct NodeOptions {
  v1::NodeRole role = v1::NODE_ROLE_UNSPECIFIED;
  std::string model_path;  // --model; required
  std::string model_id;    // "" = the model file's name without ".gguf"
  std::string host = "127.0.0.1";
  int port = 0;                   // 0 = any free port
  std::string advertise_address;  // "" = host:bound port (hostname:port for 0.0.0.0 / [::])
  std::string router;             // "host:port" of NodeControl; "" = run alone
  std::string node_id;            // "" = "<role>-<bound port>"
  std::string backend = "vulkan";
  std::string vk_device;  // "" = DUET_VK_DEVICE or automatic
  int64_t vk_cpu_threads = -1;  // CPU Vulkan drivers: worker threads, 0 = inline, -1 = default
  kv::CacheDtype kv_dtype = kv::CacheDtype::kFp8E4M3;
  int64_t block_size = kv::kDefaultBlockSize;
  int64_t kv_blocks = 0;       // > 0: pool size in blocks (wins over kv_pool_bytes)
  int64_t kv_pool_bytes = 0;   // > 0: pool size in bytes; both 0 = 256 MiB
  int64_t max_num_seqs = 256;  // also the engine's max_sequences (FP8 tail slots)
  int64_t max_num_batched_tokens = 2048;
  int64_t prefill_chunk_tokens = 512;
  int64_t heartbeat_interval_ms = 1000;  // until the router's RegisterResponse says otherwise
  // Prefill: layers per PrefillObserver group (0 = a quarter of the model's layers) and the
  // payload budget of one KvChunk.
  int64_t layers_per_group = 0;
  int64_t max_chunk_bytes = int64_t{4} << 20;
  bool enable_prefix_caching = true;       // prefill and colocated nodes
  int64_t test_corrupt_kv_chunks = 0;       // prefill, tests only (PrefillNodeOptions)
  int64_t test_decode_step_delay_ms = 0;    // decode, tests only (DecodeNodeOptions)
  std::string log_level = "info";  // trace|debug|info|warn|error|off
  int64_t metrics_port = -1;       // Prometheus /metrics on host:port; 0 = any free; -1 = off
  // Decode and colocated nodes: speculative decoding (node/speculator.h).
  SpeculationOptions speculation;
  // Set by RunNodeMain when metrics are on: the histograms the node feeds.
  std::shared_ptr<metrics::NodeHistograms> histograms;
};

// Parses a node's arguments (without the program name). `role` is the executable's default
// role; `allowed_roles` the ones --role may choose (empty: no --role flag). Sets *help and
// returns the defaults on --help; `*usage` receives the usage text. INVALID_ARGUMENT names the
// bad flag or config field; the config file's own errors (NOT_FOUND, parse positions) pass
// through.
absl::StatusOr<NodeOptions> ParseNodeOptions(const std::string& program, v1::NodeRole role,
                                             const std::vector<v1::NodeRole>& allowed_roles,
                                             const std::vector<std::string>& args, bool* help,
                                             std::string* usage);

// The engine options the node's settings call for (pool, block size, dtype, one tail slot per
// sequence).
EngineOptions EngineOptionsFor(const NodeOptions& options);

// "prefill", "decode", "colocated" (also for the scheduler role's names).
std::string RoleName(v1::NodeRole role);

v1::KvDtype ToProtoDtype(kv::CacheDtype dtype);
// KV_DTYPE_UNSPECIFIED gives INVALID_ARGUMENT.
absl::StatusOr<kv::CacheDtype> FromProtoDtype(v1::KvDtype dtype);

}  // namespace duet::node

#endif  // DUET_NODE_NODE_OPTIONS_H_
