// duet bench --cluster --model FILE [--prompt-len 128] [--gen 32] [--concurrency 1,4]
//   [--requests N] [--prefill 1] [--decode 1] [--no-colocated] [--backend vulkan|cpu]
//   [--kv-dtype f32|f16|fp8] [--pin-cpus] [--json FILE]
//
// The cluster's latency and throughput as a client sees them. For each mode -- disaggregated
// (P prefill + D decode nodes) and colocated (one node doing both, the baseline) -- starts a
// local cluster (tools/cluster/launcher.h), sends one untimed warm-up request, then for every
// (prompt length, concurrency) runs a closed loop: `concurrency` clients each send greedy
// requests of `prompt-len` random tokens and `gen` output tokens until `requests` are done.
// Reports time to first token (mean, p50, p90, p99), inter-token latency (mean, p50, p99),
// end-to-end latency, request and output-token throughput; for the disaggregated mode also the
// KV bytes on the wire per prompt token, the transfer throughput, and the time the transfer
// adds after the last layer is computed (from the prefill nodes' NodeAdmin counters).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/base/json.h"
#include "common/model/model_config.h"
#include "common/rpc/channel.h"
#include "duet/v1/internal.grpc.pb.h"
#include "tools/cluster/generate_client.h"
#include "tools/cluster/launcher.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/latency_stats.h"

namespace duet::cli {
namespace {

const char kCmd[] = "duet bench --cluster";

struct TransferCounters {
  int64_t bytes = 0, tokens = 0, transfer_us = 0, tail_us = 0;
};

// Sum of the prefill nodes' transfer counters.
TransferCounters ReadTransferCounters(const cluster::Cluster& c) {
  TransferCounters t;
  for (const cluster::ClusterProcess& p : c.processes()) {
    if (p.role != "prefill") continue;
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(p.address);
    if (!channel.ok()) continue;
    auto stub = v1::NodeAdmin::NewStub(*channel);
    grpc::ClientContext context;
    v1::NodeStatus status;
    if (!stub->GetStatus(&context, v1::GetStatusRequest(), &status).ok()) continue;
    auto get = [&status](const char* name) {
      auto it = status.counters().find(name);
      return it == status.counters().end() ? int64_t{0} : it->second;
    };
    t.bytes += get("kv_bytes_sent");
    t.tokens += get("kv_tokens_sent");
    t.transfer_us += get("kv_transfer_us");
    t.tail_us += get("kv_transfer_tail_us");
  }
  return t;
}

struct Point {
  std::string mode;
  int64_t prompt_len = 0;
  int64_t concurrency = 0;
  int64_t requests = 0;
  int64_t failed = 0;
  double seconds = 0;
  Stats ttft_ms, itl_ms, e2e_ms;
  double requests_per_s = 0;
  double output_tokens_per_s = 0;
  // Disaggregated only (0 otherwise).
  double kv_bytes_per_token = 0;
  double transfer_mb_per_s = 0;
  double transfer_tail_ms = 0;  // mean per request
};

v1::GenerateRequest RandomRequest(int64_t prompt_len, int64_t gen, int32_t vocab,
                                  std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> token(3, vocab - 1);
  v1::GenerateRequest r;
  for (int64_t i = 0; i < prompt_len; ++i) r.mutable_token_ids()->add_ids(token(rng));
  v1::SamplingParams* s = r.mutable_sampling();
  s->set_temperature(0);
  s->set_max_tokens(static_cast<int32_t>(gen));
  s->set_ignore_eos(true);
  return r;
}

Point RunPoint(const std::string& mode, cluster::Cluster& c, v1::Duet::Stub& stub,
               int64_t prompt_len, int64_t gen, int64_t concurrency, int64_t requests,
               int32_t vocab, uint32_t seed) {
  Point p;
  p.mode = mode;
  p.prompt_len = prompt_len;
  p.concurrency = concurrency;
  p.requests = requests;
  const TransferCounters before = ReadTransferCounters(c);
  std::mutex mu;
  std::vector<double> ttft, itl, e2e;
  std::atomic<int64_t> next{0}, failed{0}, output_tokens{0};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  for (int64_t k = 0; k < concurrency; ++k) {
    clients.emplace_back([&, k] {
      std::mt19937 rng(seed * 1000003u + static_cast<uint32_t>(k));
      cluster::GenerateOptions options;
      options.timeout = absl::Minutes(10);
      while (next.fetch_add(1) < requests) {
        const cluster::GenerateResult r =
            cluster::Generate(stub, RandomRequest(prompt_len, gen, vocab, rng), options);
        if (!r.status.ok() || r.tokens.empty()) {
          ++failed;
          std::fprintf(stderr, "%s: a request failed: %s\n", kCmd, r.status.ToString().c_str());
          continue;
        }
        output_tokens += static_cast<int64_t>(r.tokens.size());
        std::lock_guard<std::mutex> lock(mu);
        ttft.push_back(r.ttft_ms);
        e2e.push_back(r.total_ms);
        for (size_t i = 1; i < r.token_ms.size(); ++i) {
          itl.push_back(r.token_ms[i] - r.token_ms[i - 1]);
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  p.failed = failed.load();
  p.ttft_ms = Summarize(ttft);
  p.itl_ms = Summarize(itl);
  p.e2e_ms = Summarize(e2e);
  p.requests_per_s = static_cast<double>(requests - p.failed) / p.seconds;
  p.output_tokens_per_s = static_cast<double>(output_tokens.load()) / p.seconds;
  const TransferCounters after = ReadTransferCounters(c);
  const int64_t bytes = after.bytes - before.bytes, tokens = after.tokens - before.tokens;
  if (tokens > 0) {
    p.kv_bytes_per_token = static_cast<double>(bytes) / static_cast<double>(tokens);
    const double transfer_s = static_cast<double>(after.transfer_us - before.transfer_us) / 1e6;
    if (transfer_s > 0) p.transfer_mb_per_s = static_cast<double>(bytes) / transfer_s / 1e6;
    p.transfer_tail_ms = static_cast<double>(after.tail_us - before.tail_us) / 1e3 /
                         static_cast<double>(requests - p.failed);
  }
  return p;
}

}  // namespace

int RunClusterBench(const Args& args) {
  std::string model_path;
  std::vector<int64_t> prompt_lens = {128};
  std::vector<int64_t> concurrencies = {1, 4};
  int64_t gen = 32, requests = 0, num_prefill = 1, num_decode = 1, seed = 1;
  bool cluster_flag = false, no_colocated = false, pin_cpus = false;
  std::string backend = "vulkan", kv_dtype = "fp8", json_path, bin_dir;
  std::vector<std::string> prefill_args, decode_args, colocated_args;
  ArgParser parser(kCmd);
  parser.AddBool("cluster", &cluster_flag, "benchmark a local cluster (this mode)");
  parser.AddString("model", &model_path, "GGUF model file", true, "m");
  parser.AddIntList("prompt-len", &prompt_lens, "prompt lengths in tokens (default 128)");
  parser.AddInt("gen", &gen, "output tokens per request (default 32)");
  parser.AddIntList("concurrency", &concurrencies, "clients sending at once (default 1,4)");
  parser.AddInt("requests", &requests, "requests per point (default 4 x concurrency)");
  parser.AddInt("prefill", &num_prefill, "prefill nodes of the disaggregated cluster (default 1)");
  parser.AddInt("decode", &num_decode, "decode nodes of the disaggregated cluster (default 1)");
  parser.AddBool("no-colocated", &no_colocated, "skip the colocated baseline");
  parser.AddString("backend", &backend, "node backend: vulkan (default) or cpu");
  parser.AddString("kv-dtype", &kv_dtype, "KV pool and wire type: f32, f16 or fp8 (default)");
  parser.AddBool("pin-cpus", &pin_cpus, "pin each process to its own CPU");
  parser.AddInt("seed", &seed, "seed of the random prompts (default 1)");
  parser.AddString("bin-dir", &bin_dir, "directory of duet-router and the node executables");
  parser.AddString("json", &json_path, "also write the results as JSON to this file");
  parser.AddRepeated("prefill-arg", &prefill_args,
                     "extra flag for the prefill nodes, e.g. --prefill-arg=--vk-cpu-threads=2");
  parser.AddRepeated("decode-arg", &decode_args,
                     "extra flag for the decode nodes, e.g. --decode-arg=--vk-cpu-threads=0");
  parser.AddRepeated("colocated-arg", &colocated_args, "extra flag for the colocated node");
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;
  for (int64_t v : prompt_lens) {
    if (v < 1) return UsageError(kCmd, absl::StrCat("--prompt-len values must be >= 1, got ", v));
  }
  for (int64_t v : concurrencies) {
    if (v < 1 || v > 1024) {
      return UsageError(kCmd, absl::StrCat("--concurrency values must be in [1, 1024], got ", v));
    }
  }
  if (gen < 1) return UsageError(kCmd, absl::StrCat("--gen must be >= 1, got ", gen));
  if (requests < 0) return UsageError(kCmd, absl::StrCat("--requests must be >= 0, got ", requests));
  if (num_prefill < 1 || num_decode < 1 || num_prefill > 16 || num_decode > 16) {
    return UsageError(kCmd, "--prefill and --decode must be in [1, 16]");
  }
  absl::StatusOr<std::shared_ptr<const GgufFile>> file = OpenModelFile(model_path);
  if (!file.ok()) return Fail(kCmd, file.status());
  absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(**file);
  if (!config.ok()) return Fail(kCmd, config.status());
  const int32_t vocab = static_cast<int32_t>(config->vocab_size);
  const int64_t context = config->context_length;
  for (int64_t v : prompt_lens) {
    if (v + gen > context) {
      return UsageError(kCmd, absl::StrCat("--prompt-len ", v, " + --gen ", gen,
                                           " exceeds the model's context length ", context));
    }
  }

  struct Mode {
    std::string name;
    int prefill, decode, colocated;
  };
  std::vector<Mode> modes = {{"disaggregated", static_cast<int>(num_prefill),
                              static_cast<int>(num_decode), 0}};
  if (!no_colocated) modes.push_back({"colocated", 0, 0, 1});

  std::vector<Point> points;
  for (const Mode& mode : modes) {
    cluster::ClusterSpec spec;
    spec.model_path = model_path;
    spec.bin_dir = bin_dir;
    spec.num_prefill = mode.prefill;
    spec.num_decode = mode.decode;
    spec.num_colocated = mode.colocated;
    spec.pin_cpus = pin_cpus;
    spec.log_level = "warn";
    spec.ready_timeout = absl::Seconds(600);
    spec.node_args = {"--backend", backend, "--kv-dtype", kv_dtype};
    spec.prefill_args = prefill_args;
    spec.decode_args = decode_args;
    spec.colocated_args = colocated_args;
    std::fprintf(stderr, "%s: starting the %s cluster\n", kCmd, mode.name.c_str());
    absl::StatusOr<std::unique_ptr<cluster::Cluster>> started = cluster::Cluster::Start(spec);
    if (!started.ok()) return Fail(kCmd, started.status());
    cluster::Cluster& c = **started;
    auto stub = v1::Duet::NewStub(*rpc::CreateChannel(c.router_address()));
    // Warm-up: builds the nodes' pipelines and connections (untimed).
    std::mt19937 warm_rng(7);
    for (int64_t len : prompt_lens) {
      const cluster::GenerateResult warm =
          cluster::Generate(*stub, RandomRequest(len, 2, vocab, warm_rng));
      if (!warm.status.ok()) return Fail(kCmd, warm.status);
    }
    for (int64_t len : prompt_lens) {
      for (int64_t conc : concurrencies) {
        const int64_t n = requests > 0 ? requests : 4 * conc;
        points.push_back(RunPoint(mode.name, c, *stub, len, gen, conc, n, vocab,
                                  static_cast<uint32_t>(seed)));
        const Point& p = points.back();
        std::fprintf(stderr, "%s: %s prompt %lld x%lld: TTFT mean %.1f ms, ITL mean %.2f ms\n",
                     kCmd, p.mode.c_str(), static_cast<long long>(len),
                     static_cast<long long>(conc), p.ttft_ms.mean, p.itl_ms.mean);
      }
    }
    c.Stop();
  }

  std::printf("%-14s %7s %5s %9s %9s %9s %9s %9s %9s %9s %9s\n", "mode", "prompt", "conc",
              "ttft_avg", "ttft_p50", "ttft_p99", "itl_avg", "itl_p99", "req/s", "out_tok/s",
              "kv_B/tok");
  for (const Point& p : points) {
    std::printf("%-14s %7lld %5lld %9.1f %9.1f %9.1f %9.2f %9.2f %9.2f %9.1f %9.1f\n",
                p.mode.c_str(), static_cast<long long>(p.prompt_len),
                static_cast<long long>(p.concurrency), p.ttft_ms.mean, p.ttft_ms.p50,
                p.ttft_ms.p99, p.itl_ms.mean, p.itl_ms.p99, p.requests_per_s,
                p.output_tokens_per_s, p.kv_bytes_per_token);
  }
  for (const Point& p : points) {
    if (p.mode != "disaggregated" || p.kv_bytes_per_token <= 0) continue;
    std::printf("transfer (prompt %lld x%lld): %.1f MB/s while streaming, %.2f ms per request "
                "after the last layer\n",
                static_cast<long long>(p.prompt_len), static_cast<long long>(p.concurrency),
                p.transfer_mb_per_s, p.transfer_tail_ms);
  }
  int64_t failed = 0;
  for (const Point& p : points) failed += p.failed;

  if (!json_path.empty()) {
    std::vector<std::string> rows;
    for (const Point& p : points) {
      rows.push_back(absl::StrCat(
          "  {\"mode\": ", JsonString(p.mode), ", \"prompt_len\": ", p.prompt_len,
          ", \"concurrency\": ", p.concurrency, ", \"requests\": ", p.requests,
          ", \"failed\": ", p.failed, ", \"seconds\": ", JsonFloat(static_cast<float>(p.seconds)),
          ", \"ttft_ms\": ", StatsJson(p.ttft_ms), ", \"itl_ms\": ", StatsJson(p.itl_ms),
          ", \"e2e_ms\": ", StatsJson(p.e2e_ms),
          ", \"requests_per_s\": ", JsonFloat(static_cast<float>(p.requests_per_s)),
          ", \"output_tokens_per_s\": ", JsonFloat(static_cast<float>(p.output_tokens_per_s)),
          ", \"kv_bytes_per_prompt_token\": ", JsonFloat(static_cast<float>(p.kv_bytes_per_token)),
          ", \"transfer_mb_per_s\": ", JsonFloat(static_cast<float>(p.transfer_mb_per_s)),
          ", \"transfer_tail_ms\": ", JsonFloat(static_cast<float>(p.transfer_tail_ms)), "}"));
    }
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    const std::string json = absl::StrCat(
        "{\n \"bench\": \"cluster\",\n \"machine\": {\"host\": ", JsonString(host),
        ", \"cpus\": ", std::thread::hardware_concurrency(), "},\n \"model\": {\"path\": ",
        JsonString(model_path), ", \"name\": ", JsonString(config->name),
        ", \"architecture\": ", JsonString(config->architecture_name), "},\n \"settings\": {",
        "\"backend\": ", JsonString(backend), ", \"kv_dtype\": ", JsonString(kv_dtype),
        ", \"gen\": ", gen, ", \"prefill_nodes\": ", num_prefill, ", \"decode_nodes\": ",
        num_decode, ", \"pin_cpus\": ", pin_cpus ? "true" : "false", ", \"seed\": ", seed,
        ", \"prefill_args\": ", JsonString(absl::StrJoin(prefill_args, " ")),
        ", \"decode_args\": ", JsonString(absl::StrJoin(decode_args, " ")),
        ", \"colocated_args\": ", JsonString(absl::StrJoin(colocated_args, " ")),
        "},\n \"results\": [\n", absl::StrJoin(rows, ",\n"), "\n ]\n}\n");
    std::ofstream out(json_path, std::ios::binary | std::ios::trunc);
    out << json;
    if (!out) return Fail(kCmd, absl::UnavailableError(absl::StrCat("cannot write ", json_path)));
  }
  return failed == 0 ? 0 : kExitRuntimeError;
}

}  // namespace duet::cli
