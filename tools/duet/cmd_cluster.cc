// duet cluster [--config FILE] [--model FILE] [--port N] [--prefill N] [--decode N]
//   [--colocated N] [--backend vulkan|cpu] [--kv-dtype f32|f16|fp8] [--prompt TEXT ...]
//   [--prefill-arg FLAG ...] [--decode-arg FLAG ...] [--colocated-arg FLAG ...]
//
// Starts a local cluster: duet-router plus the prefill, decode and colocated nodes, each a
// separate process on loopback (tools/cluster/launcher.h). Prints "listening on HOST:PORT" (the
// router's public address) once every process is healthy and registered, then a table of the
// processes. Without --prompt it serves until Ctrl-C / SIGTERM, then stops the router and drains
// the nodes (exit 0); if a process dies meanwhile the cluster is stopped and the exit code is 1.
// With --prompt it sends the prompts (concurrently), prints each completion, and stops.
//
// Node counts, the router port and the model come from --config (duet.v1.ClusterConfig text
// format) when given there; flags override; defaults are 2 prefill + 1 decode nodes.
#include <signal.h>

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/rpc/channel.h"
#include "common/rpc/finish_reason.h"
#include "common/rpc/text_config.h"
#include "duet/v1/config.pb.h"
#include "tools/cluster/generate_client.h"
#include "tools/cluster/launcher.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/client_flags.h"

namespace duet::cli {
namespace {

const char kCmd[] = "duet cluster";

// Sends every prompt at once and prints the completions in order. Returns the number failed.
int RunPrompts(const std::string& address, const ArgParser& parser, const ClientFlags& flags,
               const std::vector<std::string>& prompts) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(address);
  if (!channel.ok()) return static_cast<int>(prompts.size());
  auto stub = v1::Duet::NewStub(*channel);
  std::vector<cluster::GenerateResult> results(prompts.size());
  std::vector<std::thread> threads;
  cluster::GenerateOptions options;
  options.timeout = absl::Seconds(flags.timeout_s > 0 ? flags.timeout_s : 600);
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = cluster::Generate(*stub, MakeGenerateRequest(parser, flags, prompts[i]), options);
    });
  }
  for (std::thread& t : threads) t.join();
  int failed = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const cluster::GenerateResult& r = results[i];
    std::printf("\n>>> %s\n", prompts[i].c_str());
    if (!r.status.ok()) {
      ++failed;
      std::printf("!!! failed: %s\n", r.status.ToString().c_str());
      continue;
    }
    std::printf("%s%s\n", prompts[i].c_str(), r.text.c_str());
    std::printf("    [%s; %lld prompt + %lld completion tokens; first token %.0f ms; %.0f ms in all]\n",
                rpc::FinishReasonName(r.finish_reason),
                static_cast<long long>(r.usage.prompt_tokens()),
                static_cast<long long>(r.usage.completion_tokens()), r.ttft_ms, r.total_ms);
  }
  std::fflush(stdout);
  return failed;
}

void PrintExits(const std::vector<cluster::ProcessExit>& exits) {
  for (const cluster::ProcessExit& e : exits) {
    if (e.exit_code != 0) std::fprintf(stderr, "%s: %s\n", kCmd, e.Describe().c_str());
  }
}

bool AllClean(const std::vector<cluster::ProcessExit>& exits) {
  for (const cluster::ProcessExit& e : exits) {
    if (e.exit_code != 0) return false;
  }
  return true;
}

}  // namespace

int RunCluster(const Args& args) {
  // Before any thread exists, so that every thread inherits the mask and sigtimedwait below
  // receives the signals.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  cluster::ClusterSpec spec;
  std::string config_path;
  std::vector<std::string> overrides;
  std::string model_path;
  int64_t port = 0, num_prefill = 2, num_decode = 1, num_colocated = 0;
  std::string backend, kv_dtype;
  int64_t kv_blocks = 0, ready_timeout_s = 300;
  std::vector<std::string> prompts;
  ClientFlags flags;
  ArgParser parser(kCmd);
  parser.AddString("config", &config_path, "duet.v1.ClusterConfig in protobuf text format");
  parser.AddRepeated("set", &overrides, "override one config field, e.g. kv.dtype=KV_DTYPE_F16");
  parser.AddString("model", &model_path, "GGUF model file (or model_path in --config)", false,
                   "m");
  parser.AddInt("port", &port, "the router's public port; 0 = any free port (default 50051)");
  parser.AddString("host", &spec.host, "interface every process listens on (default 127.0.0.1)");
  parser.AddInt("prefill", &num_prefill, "prefill nodes (default 2)");
  parser.AddInt("decode", &num_decode, "decode nodes (default 1)");
  parser.AddInt("colocated", &num_colocated, "colocated nodes, doing both (default 0)");
  parser.AddString("backend", &backend, "node backend: vulkan (default) or cpu");
  parser.AddString("kv-dtype", &kv_dtype, "KV pool and wire type: f32, f16 or fp8 (default)");
  parser.AddInt("kv-blocks", &kv_blocks, "KV pool size of each node, in blocks");
  parser.AddString("log-level", &spec.log_level, "log level of every process (default warn)");
  parser.AddString("bin-dir", &spec.bin_dir, "directory of duet-router and the node executables");
  parser.AddInt("ready-timeout-s", &ready_timeout_s, "how long startup may take (default 300)");
  parser.AddBool("pin-cpus", &spec.pin_cpus, "pin each process to its own CPU");
  parser.AddBool("metrics", &spec.metrics,
                 "every process serves Prometheus metrics on a free port (listed)");
  parser.AddRepeated("prefill-arg", &spec.prefill_args,
                     "extra flag for every prefill node, e.g. --prefill-arg=--vk-cpu-threads=2 "
                     "(repeatable)");
  parser.AddRepeated("decode-arg", &spec.decode_args,
                     "extra flag for every decode node, e.g. --decode-arg=--vk-cpu-threads=0 "
                     "(repeatable)");
  parser.AddRepeated("colocated-arg", &spec.colocated_args,
                     "extra flag for every colocated node (repeatable)");
  parser.AddRepeated("prompt", &prompts,
                     "send this prompt once ready, print the completion, then stop (repeatable)");
  AddClientFlags(parser, &flags, /*with_model_id=*/false);
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;
  if (std::string problem = CheckClientFlags(flags); !problem.empty()) {
    return UsageError(kCmd, problem);
  }

  v1::ClusterConfig config;
  if (!config_path.empty()) {
    if (absl::Status s = rpc::LoadTextProto(config_path, &config); !s.ok()) {
      return UsageError(kCmd, absl::StrCat("--config: ", s.message()));
    }
  }
  if (absl::Status s = rpc::ApplyOverrides(overrides, &config); !s.ok()) {
    return UsageError(kCmd, absl::StrCat("--set: ", s.message()));
  }
  if (!parser.WasSet("prefill") && config.has_num_prefill_nodes()) {
    num_prefill = config.num_prefill_nodes();
  }
  if (!parser.WasSet("decode") && config.has_num_decode_nodes()) {
    num_decode = config.num_decode_nodes();
  }
  if (!parser.WasSet("colocated") && config.has_num_colocated_nodes()) {
    num_colocated = config.num_colocated_nodes();
  }
  if (!parser.WasSet("port")) port = config.router().port();
  if (model_path.empty()) model_path = config.model_path();
  if (model_path.empty()) return UsageError(kCmd, "--model FILE is required (or model_path in --config)");
  for (auto [name, value] : {std::pair<const char*, int64_t>{"--prefill", num_prefill},
                             {"--decode", num_decode},
                             {"--colocated", num_colocated}}) {
    if (value < 0 || value > 64) {
      return UsageError(kCmd, absl::StrCat(name, " must be in [0, 64], got ", value));
    }
  }
  if (num_decode + num_colocated == 0) {
    return UsageError(kCmd, "the cluster needs --decode or --colocated nodes (both are 0)");
  }
  if (num_decode > 0 && num_prefill == 0) {
    return UsageError(kCmd, "--decode nodes need at least one --prefill node");
  }
  if (port < 0 || port > 65535) {
    return UsageError(kCmd, absl::StrCat("--port must be in [0, 65535], got ", port));
  }
  if (ready_timeout_s <= 0) {
    return UsageError(kCmd, absl::StrCat("--ready-timeout-s must be > 0, got ", ready_timeout_s));
  }
  if (kv_blocks < 0) return UsageError(kCmd, absl::StrCat("--kv-blocks must be > 0, got ", kv_blocks));

  spec.model_path = model_path;
  spec.config_path = config_path;
  spec.overrides = overrides;
  spec.router_port = static_cast<int>(port);
  spec.num_prefill = static_cast<int>(num_prefill);
  spec.num_decode = static_cast<int>(num_decode);
  spec.num_colocated = static_cast<int>(num_colocated);
  spec.ready_timeout = absl::Seconds(ready_timeout_s);
  if (!backend.empty()) spec.node_args.insert(spec.node_args.end(), {"--backend", backend});
  if (!kv_dtype.empty()) spec.node_args.insert(spec.node_args.end(), {"--kv-dtype", kv_dtype});
  if (kv_blocks > 0) {
    spec.node_args.insert(spec.node_args.end(), {"--kv-blocks", absl::StrCat(kv_blocks)});
  }

  std::fprintf(stderr, "%s: starting the router, %lld prefill, %lld decode and %lld colocated nodes\n",
               kCmd, static_cast<long long>(num_prefill), static_cast<long long>(num_decode),
               static_cast<long long>(num_colocated));
  absl::StatusOr<std::unique_ptr<cluster::Cluster>> started = cluster::Cluster::Start(spec);
  if (!started.ok()) return Fail(kCmd, started.status());
  cluster::Cluster& running = **started;
  std::printf("listening on %s\n", running.router_address().c_str());
  for (const cluster::ClusterProcess& p : running.processes()) {
    std::printf("  %-12s %-22s pid %-8d%s%s\n", p.name.c_str(), p.address.c_str(), p.pid,
                p.metrics_address.empty() ? "" : "metrics http://",
                p.metrics_address.empty() ? "" : (p.metrics_address + "/metrics").c_str());
  }
  std::fflush(stdout);

  if (!prompts.empty()) {
    const int failed = RunPrompts(running.router_address(), parser, flags, prompts);
    const std::vector<cluster::ProcessExit> exits = running.Stop();
    PrintExits(exits);
    return failed == 0 && AllClean(exits) ? 0 : kExitRuntimeError;
  }

  std::fprintf(stderr, "%s: serving; Ctrl-C stops the cluster\n", kCmd);
  while (true) {
    const timespec tick{0, 200 * 1000 * 1000};
    siginfo_t info;
    if (sigtimedwait(&signals, &info, &tick) > 0) {
      std::fprintf(stderr, "%s: stopping (the router, then draining the nodes)\n", kCmd);
      const std::vector<cluster::ProcessExit> exits = running.Stop();
      PrintExits(exits);
      return AllClean(exits) ? 0 : kExitRuntimeError;
    }
    if (std::optional<cluster::ProcessExit> exit = running.PollExited()) {
      std::fprintf(stderr, "%s: %s; stopping the cluster\n", kCmd, exit->Describe().c_str());
      PrintExits(running.Stop());
      return kExitRuntimeError;
    }
  }
}

}  // namespace duet::cli
