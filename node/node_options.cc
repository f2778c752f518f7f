#include "node/node_options.h"

#include <algorithm>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/args.h"
#include "common/base/status.h"
#include "common/rpc/text_config.h"
#include "duet/v1/config.pb.h"

namespace duet::node {
namespace {

absl::StatusOr<v1::NodeRole> ParseRole(const std::string& name,
                                       const std::vector<v1::NodeRole>& allowed) {
  std::vector<std::string> names;
  for (v1::NodeRole r : allowed) {
    names.push_back(RoleName(r));
    if (RoleName(r) == name) return r;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--role '", name, "' is not one of: ", absl::StrJoin(names, ", ")));
}

std::string ModelIdFromPath(const std::string& path) {
  std::string_view name = path;
  if (const size_t slash = name.rfind('/'); slash != std::string_view::npos) {
    name.remove_prefix(slash + 1);
  }
  if (name.ends_with(".gguf")) name.remove_suffix(5);
  return std::string(name);
}

absl::Status CheckPositive(const char* flag, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(flag, " must be > 0, got ", value));
}

}  // namespace

std::string RoleName(v1::NodeRole role) {
  switch (role) {
    case v1::NODE_ROLE_PREFILL:
      return "prefill";
    case v1::NODE_ROLE_DECODE:
      return "decode";
    case v1::NODE_ROLE_COLOCATED:
      return "colocated";
    default:
      return "unspecified";
  }
}

v1::KvDtype ToProtoDtype(kv::CacheDtype dtype) {
  switch (dtype) {
    case kv::CacheDtype::kF32:
      return v1::KV_DTYPE_F32;
    case kv::CacheDtype::kF16:
      return v1::KV_DTYPE_F16;
    case kv::CacheDtype::kFp8E4M3:
      return v1::KV_DTYPE_FP8_E4M3;
  }
  return v1::KV_DTYPE_UNSPECIFIED;
}

absl::StatusOr<kv::CacheDtype> FromProtoDtype(v1::KvDtype dtype) {
  switch (dtype) {
    case v1::KV_DTYPE_F32:
      return kv::CacheDtype::kF32;
    case v1::KV_DTYPE_F16:
      return kv::CacheDtype::kF16;
    case v1::KV_DTYPE_FP8_E4M3:
      return kv::CacheDtype::kFp8E4M3;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("KV dtype ", v1::KvDtype_Name(dtype), " is not a storage type"));
  }
}

absl::StatusOr<NodeOptions> ParseNodeOptions(const std::string& program, v1::NodeRole role,
                                             const std::vector<v1::NodeRole>& allowed_roles,
                                             const std::vector<std::string>& args, bool* help,
                                             std::string* usage) {
  NodeOptions o;
  o.role = role;
  std::string config_path, role_name, kv_dtype, prefix_caching, self_draft_type, spec_adaptive;
  std::vector<std::string> overrides;
  int64_t port = 0, kv_pool_mb = 0;
  ArgParser parser(program);
  parser.AddString("model", &o.model_path, "GGUF model file (or config model_path)");
  parser.AddString("model-id", &o.model_id, "model id (default: the file name without .gguf)");
  parser.AddString("config", &config_path, "text duet.v1.ClusterConfig; flags override it");
  parser.AddRepeated("set", &overrides, "config override a.b.c=value (repeatable)");
  if (!allowed_roles.empty()) {
    role_name = RoleName(role);
    parser.AddString("role", &role_name, absl::StrCat("node role (default ", role_name, ")"));
  }
  parser.AddString("host", &o.host, "interface to listen on (default 127.0.0.1)");
  parser.AddInt("port", &port, "TCP port; 0 = any free port (default 0)");
  parser.AddString("advertise-address", &o.advertise_address,
                   "host:port peers dial (default host:bound port)");
  parser.AddString("router", &o.router, "router NodeControl host:port (default: run alone)");
  parser.AddString("node-id", &o.node_id, "unique node name (default <role>-<port>)");
  parser.AddString("backend", &o.backend, "vulkan (default) or cpu");
  parser.AddString("vk-device", &o.vk_device, "Vulkan device index or name substring");
  parser.AddInt("vk-cpu-threads", &o.vk_cpu_threads,
                "CPU Vulkan drivers (lavapipe): worker threads, 0 = run each dispatch on the "
                "submitting thread (default: the driver's)");
  parser.AddString("kv-dtype", &kv_dtype, "KV pool and wire type: f32, f16 or fp8 (default)");
  parser.AddInt("block-size", &o.block_size, "tokens per KV block (default 16)");
  parser.AddInt("kv-blocks", &o.kv_blocks, "KV pool size in blocks");
  parser.AddInt("kv-pool-mb", &kv_pool_mb, "KV pool size in MiB (default 256)");
  parser.AddInt("max-num-seqs", &o.max_num_seqs, "most sequences at once (default 256)");
  parser.AddInt("max-batched-tokens", &o.max_num_batched_tokens,
                "most tokens in one step (default 2048)");
  parser.AddInt("prefill-chunk-tokens", &o.prefill_chunk_tokens,
                "longest prefill chunk (default 512)");
  parser.AddInt("heartbeat-ms", &o.heartbeat_interval_ms, "heartbeat period (default 1000)");
  parser.AddString("prefix-caching", &prefix_caching,
                   "on (default) or off: reuse cached KV of shared prompt prefixes");
  parser.AddString("speculation", &o.speculation.method,
                   "decode: off (default), ngram, draft or self (speculative decoding)");
  parser.AddString("draft-model", &o.speculation.draft_model, "decode: GGUF draft model");
  parser.AddString("self-draft-type", &self_draft_type, "decode: q4_0 (default) or q8_0");
  parser.AddInt("num-speculative-tokens", &o.speculation.adaptive.max_draft_tokens,
                "decode: most drafted tokens per step (default 4)");
  parser.AddString("speculation-adaptive", &spec_adaptive,
                   "decode: on (default) or off: adapt the draft length, off where it won't pay");
  parser.AddInt("layers-per-group", &o.layers_per_group,
                "prefill: layers between KV sends (default: a quarter of the layers)");
  parser.AddInt("max-chunk-bytes", &o.max_chunk_bytes, "prefill: KvChunk payload budget");
  parser.AddInt("test-corrupt-kv-chunks", &o.test_corrupt_kv_chunks,
                "prefill, for tests: corrupt the first N KvChunks sent (default 0)");
  parser.AddInt("test-decode-step-delay-ms", &o.test_decode_step_delay_ms,
                "decode, for tests: sleep this long in every decode step (default 0)");
  parser.AddString("log-level", &o.log_level, "trace, debug, info (default), warn, error, off");
  parser.AddInt("metrics-port", &o.metrics_port,
                "serve Prometheus metrics at http://HOST:PORT/metrics (0 = any free port; "
                "default: off)");
  *usage = parser.Usage();
  DUET_RETURN_IF_ERROR(parser.Parse(args));
  *help = parser.help_requested();
  if (*help) return o;

  // The config (empty without --config: its getters give the proto2 defaults).
  v1::ClusterConfig config;
  if (!config_path.empty()) DUET_RETURN_IF_ERROR(rpc::LoadTextProto(config_path, &config));
  DUET_RETURN_IF_ERROR(rpc::ApplyOverrides(overrides, &config));
  if (!parser.WasSet("model")) o.model_path = config.model_path();
  if (o.model_path.empty()) {
    return absl::InvalidArgumentError("no model: give --model FILE (or model_path in --config)");
  }
  if (!parser.WasSet("model-id")) o.model_id = config.model_id();
  if (o.model_id.empty()) o.model_id = ModelIdFromPath(o.model_path);
  if (!role_name.empty()) {
    DUET_ASSIGN_OR_RETURN(o.role, ParseRole(role_name, allowed_roles));
  }
  if (!parser.WasSet("backend")) o.backend = config.backend();
  if (o.backend != "vulkan" && o.backend != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend '", o.backend, "' is not one of: vulkan, cpu"));
  }
  if (!kv_dtype.empty()) {
    DUET_ASSIGN_OR_RETURN(o.kv_dtype, kv::ParseCacheDtype(kv_dtype));
  } else {
    DUET_ASSIGN_OR_RETURN(o.kv_dtype, FromProtoDtype(config.kv().dtype()));
  }
  if (!parser.WasSet("block-size")) o.block_size = config.kv().block_size();
  if (!parser.WasSet("kv-blocks") && !parser.WasSet("kv-pool-mb")) {
    if (config.kv().has_num_blocks()) o.kv_blocks = config.kv().num_blocks();
    if (config.kv().has_pool_bytes()) o.kv_pool_bytes = config.kv().pool_bytes();
  } else if (parser.WasSet("kv-pool-mb")) {
    DUET_RETURN_IF_ERROR(CheckPositive("--kv-pool-mb", kv_pool_mb));
    o.kv_pool_bytes = kv_pool_mb << 20;
  }
  if (parser.WasSet("kv-blocks")) DUET_RETURN_IF_ERROR(CheckPositive("--kv-blocks", o.kv_blocks));
  const v1::SchedulerConfig& sched = config.scheduler();
  if (!parser.WasSet("max-num-seqs")) o.max_num_seqs = sched.max_num_seqs();
  if (!parser.WasSet("max-batched-tokens")) {
    o.max_num_batched_tokens = sched.max_num_batched_tokens();
  }
  if (!parser.WasSet("prefill-chunk-tokens")) {
    o.prefill_chunk_tokens = sched.prefill_chunk_tokens();
  }
  if (!parser.WasSet("heartbeat-ms")) o.heartbeat_interval_ms = config.heartbeat_interval_ms();
  if (!parser.WasSet("prefix-caching")) {
    o.enable_prefix_caching = sched.enable_prefix_caching();
  } else if (prefix_caching == "on" || prefix_caching == "off") {
    o.enable_prefix_caching = prefix_caching == "on";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--prefix-caching '", prefix_caching, "' is not one of: on, off"));
  }
  const v1::SpeculationConfig& spec = config.speculation();
  if (!parser.WasSet("speculation")) o.speculation.method = spec.method();
  if (!parser.WasSet("draft-model")) o.speculation.draft_model = spec.draft_model();
  if (!parser.WasSet("self-draft-type")) self_draft_type = spec.self_draft_type();
  if (self_draft_type == "q4_0" || self_draft_type == "q8_0") {
    o.speculation.self_draft_type = self_draft_type == "q4_0" ? GgmlType::kQ4_0 : GgmlType::kQ8_0;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--self-draft-type '", self_draft_type, "' is not one of: q4_0, q8_0"));
  }
  if (!parser.WasSet("num-speculative-tokens")) {
    o.speculation.adaptive.max_draft_tokens = spec.num_speculative_tokens();
  }
  if (!parser.WasSet("speculation-adaptive")) {
    o.speculation.adaptive_enabled = spec.adaptive();
  } else if (spec_adaptive == "on" || spec_adaptive == "off") {
    o.speculation.adaptive_enabled = spec_adaptive == "on";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--speculation-adaptive '", spec_adaptive, "' is not one of: on, off"));
  }
  if (absl::Status s = o.speculation.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("speculation: ", s.message()));
  }
  DUET_RETURN_IF_ERROR(CheckPositive("--block-size", o.block_size));
  DUET_RETURN_IF_ERROR(CheckPositive("--max-num-seqs", o.max_num_seqs));
  DUET_RETURN_IF_ERROR(CheckPositive("--max-batched-tokens", o.max_num_batched_tokens));
  DUET_RETURN_IF_ERROR(CheckPositive("--prefill-chunk-tokens", o.prefill_chunk_tokens));
  DUET_RETURN_IF_ERROR(CheckPositive("--heartbeat-ms", o.heartbeat_interval_ms));
  if (parser.WasSet("vk-cpu-threads") &&
      (o.vk_cpu_threads < 0 || o.vk_cpu_threads > kMaxVkCpuThreads)) {
    return absl::InvalidArgumentError(absl::StrCat("--vk-cpu-threads must be in [0, ",
                                                   kMaxVkCpuThreads, "], got ",
                                                   o.vk_cpu_threads));
  }
  if (parser.WasSet("metrics-port") && (o.metrics_port < 0 || o.metrics_port > 65535)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-port must be in [0, 65535], got ", o.metrics_port));
  }
  DUET_RETURN_IF_ERROR(CheckPositive("--max-chunk-bytes", o.max_chunk_bytes));
  if (o.test_decode_step_delay_ms < 0 || o.test_decode_step_delay_ms > 10000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--test-decode-step-delay-ms must be in [0, 10000], got ", o.test_decode_step_delay_ms));
  }
  if (o.test_corrupt_kv_chunks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--test-corrupt-kv-chunks must be >= 0, got ", o.test_corrupt_kv_chunks));
  }
  if (o.layers_per_group < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--layers-per-group must be >= 0, got ", o.layers_per_group));
  }
  if (o.max_num_batched_tokens < o.max_num_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-batched-tokens (", o.max_num_batched_tokens,
                     ") must be >= --max-num-seqs (", o.max_num_seqs, ")"));
  }

  // This node's entry in the config, if any.
  const v1::NodeConfig* entry = nullptr;
  for (const v1::NodeConfig& n : config.nodes()) {
    if (!o.node_id.empty() && n.node_id() == o.node_id) entry = &n;
  }
  if (entry != nullptr) {
    if (entry->has_role() && entry->role() != o.role) {
      return absl::InvalidArgumentError(absl::StrCat("config node '", o.node_id, "' has role ",
                                                     RoleName(entry->role()), " but this is a ",
                                                     RoleName(o.role), " node"));
    }
    if (!parser.WasSet("host")) o.host = entry->listen_address();
    if (!parser.WasSet("port")) port = entry->port();
    if (!parser.WasSet("advertise-address")) o.advertise_address = entry->advertise_address();
    if (!parser.WasSet("vk-device") && entry->has_device()) {
      o.vk_device = absl::StrCat(entry->device());
    }
  }
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--port must be in [0, 65535], got ", port));
  }
  o.port = static_cast<int>(port);
  return o;
}

EngineOptions EngineOptionsFor(const NodeOptions& options) {
  EngineOptions e;
  e.kv_dtype = options.kv_dtype;
  e.block_size = options.block_size;
  e.num_kv_blocks = options.kv_blocks;
  if (options.kv_pool_bytes > 0) e.kv_pool_bytes = options.kv_pool_bytes;
  e.max_sequences = options.max_num_seqs;
  e.vk_device = options.vk_device;
  e.vk_cpu_threads = static_cast<int>(options.vk_cpu_threads);
  return e;
}

}  // namespace duet::node
