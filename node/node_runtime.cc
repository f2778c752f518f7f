#include "node/node_runtime.h"

#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server.h"
#include "duet/v1/internal.grpc.pb.h"
#include "node/node_control.h"

namespace duet::node {
namespace {

sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

// Counts termination signals on a thread of its own (sigwait), so the main thread can wait on
// a condition instead.
class SignalWatcher {
 public:
  SignalWatcher() {
    thread_ = std::thread([this] {
      const sigset_t set = TerminationSignals();
      while (true) {
        int signal = 0;
        if (sigwait(&set, &signal) != 0) continue;
        absl::MutexLock lock(&mu_);
        if (done_) return;
        ++count_;
        spdlog::info("received signal {} ({})", signal, count_ == 1 ? "draining" : "giving up");
      }
    });
  }
  ~SignalWatcher() {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    // Wakes the sigwait; the signal is blocked in every thread, so nothing else sees it.
    pthread_kill(thread_.native_handle(), SIGTERM);
    thread_.join();
  }

  // Waits until `n` signals arrived or `timeout` passed; true when they arrived.
  bool Await(int n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto arrived = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return count_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&arrived), timeout);
  }

 private:
  absl::Mutex mu_;
  int count_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// duet.v1.NodeAdmin: the node's identity and its load right now.
class NodeAdminService final : public v1::NodeAdmin::CallbackService {
 public:
  NodeAdminService(const NodeOptions& options, std::string node_id, const NodeHooks& hooks)
      : node_id_(std::move(node_id)),
        role_(options.role),
        model_id_(options.model_id),
        load_(hooks.load),
        counters_(hooks.counters) {}

  void SetDraining() { draining_.store(true); }

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const v1::GetStatusRequest* /*request*/,
                                      v1::NodeStatus* response) override {
    response->set_node_id(node_id_);
    response->set_role(role_);
    response->set_model_id(model_id_);
    response->set_draining(draining_.load());
    *response->mutable_load() = load_();
    if (counters_) counters_(response->mutable_counters());
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const std::string node_id_;
  const v1::NodeRole role_;
  const std::string model_id_;
  const std::function<v1::NodeLoad()> load_;
  const std::function<void(google::protobuf::Map<std::string, int64_t>*)> counters_;
  std::atomic<bool> draining_{false};
};

// The node's load and event counts as Prometheus series, read at scrape time.
std::vector<metrics::Sample> NodeSamples(const NodeHooks& hooks) {
  using prometheus::MetricType;
  const v1::NodeLoad load = hooks.load();
  const double total = static_cast<double>(load.total_kv_blocks());
  const double used = total - static_cast<double>(load.free_kv_blocks());
  std::vector<metrics::Sample> samples = {
      {"duet:num_requests_running", "Sequences being decoded (or prefilled) now.",
       MetricType::Gauge, static_cast<double>(load.running_sequences()), {}},
      {"duet:num_requests_waiting", "Requests admitted but not running (KV, batch slot).",
       MetricType::Gauge, static_cast<double>(load.waiting_sequences()), {}},
      {"duet:num_queued_prefill_tokens", "Prompt tokens waiting for prefill.", MetricType::Gauge,
       static_cast<double>(load.queued_prefill_tokens()), {}},
      {"duet:kv_cache_blocks_used", "KV blocks in use (reserved or holding KV).",
       MetricType::Gauge, used, {}},
      {"duet:kv_cache_blocks_total", "KV blocks in the pool.", MetricType::Gauge, total, {}},
      {"duet:kv_cache_usage_perc", "Fraction of the KV pool in use (0..1).", MetricType::Gauge,
       total > 0 ? used / total : 0.0, {}},
  };
  if (!hooks.counters) return samples;
  google::protobuf::Map<std::string, int64_t> counters;
  hooks.counters(&counters);
  struct Mapping {
    const char* counter;
    const char* metric;
    const char* help;
  };
  static constexpr Mapping kMappings[] = {
      {"kv_chunks_accepted", "duet:kv_transfer_chunks_total", "KV chunks sent or accepted."},
      {"kv_chunks_sent", "duet:kv_transfer_chunks_total", "KV chunks sent or accepted."},
      {"kv_bytes_sent", "duet:kv_transfer_bytes_total", "KV payload bytes sent."},
      {"kv_transfers_failed", "duet:kv_transfer_failures_total", "KV transfers that failed."},
      {"kv_checksum_errors", "duet:kv_checksum_errors_total", "KV chunks with a bad checksum."},
      {"leases_expired", "duet:kv_leases_expired_total", "Reservations freed by their lease."},
      {"preemptions", "duet:num_preemptions_total", "Sequences preempted (KV pool full)."},
      {"prefix_cache_queried_tokens", "duet:prefix_cache_queries_total",
       "Prompt tokens looked up in the prefix cache."},
      {"prefix_cache_hit_tokens", "duet:prefix_cache_hits_total",
       "Prompt tokens found in the prefix cache (not recomputed)."},
      {"prefix_cache_evictions", "duet:prefix_cache_evictions_total",
       "Cached KV blocks evicted to make room."},
      {"spec_decode_num_drafts", "duet:spec_decode_num_drafts_total",
       "Speculative steps of a sequence that verified at least one drafted token."},
      {"spec_decode_num_draft_tokens", "duet:spec_decode_num_draft_tokens_total",
       "Drafted tokens verified."},
      {"spec_decode_num_accepted_tokens", "duet:spec_decode_num_accepted_tokens_total",
       "Drafted tokens accepted."},
  };
  for (const Mapping& m : kMappings) {
    auto it = counters.find(m.counter);
    if (it == counters.end()) continue;
    samples.push_back({m.metric, m.help, MetricType::Counter, static_cast<double>(it->second), {}});
  }
  // Speculative decoding: per-position acceptance, acceptance rate, mean accepted length.
  for (int position = 0;; ++position) {
    auto it = counters.find(absl::StrCat("spec_decode_accepted_pos_", position));
    if (it == counters.end()) break;
    samples.push_back({"duet:spec_decode_num_accepted_tokens_per_pos_total",
                       "Drafted tokens accepted, by their position in the draft (0 = first).",
                       MetricType::Counter, static_cast<double>(it->second),
                       {{"position", std::to_string(position)}}});
  }
  if (auto drafts = counters.find("spec_decode_num_drafts"); drafts != counters.end()) {
    const double num_drafts = static_cast<double>(drafts->second);
    const double drafted = static_cast<double>(counters["spec_decode_num_draft_tokens"]);
    const double accepted = static_cast<double>(counters["spec_decode_num_accepted_tokens"]);
    samples.push_back({"duet:spec_decode_acceptance_rate",
                       "Accepted over drafted tokens since the node started.", MetricType::Gauge,
                       drafted > 0 ? accepted / drafted : 0.0, {}});
    samples.push_back({"duet:spec_decode_mean_accepted_length",
                       "Tokens emitted per speculative step of a sequence (accepted drafts + 1), "
                       "since the node started.",
                       MetricType::Gauge, num_drafts > 0 ? 1.0 + accepted / num_drafts : 0.0, {}});
  }
  if (auto it = counters.find("prefix_cache_blocks"); it != counters.end()) {
    samples.push_back({"duet:prefix_cache_blocks", "KV blocks in the prefix cache (in use or evictable).",
                       MetricType::Gauge, static_cast<double>(it->second), {}});
    const auto queries = counters.find("prefix_cache_queried_tokens");
    const auto hits = counters.find("prefix_cache_hit_tokens");
    if (queries != counters.end() && hits != counters.end()) {
      const double rate = queries->second > 0 ? static_cast<double>(hits->second) /
                                                    static_cast<double>(queries->second)
                                              : 0.0;
      samples.push_back({"duet:prefix_cache_hit_rate",
                         "Prefix cache hits over queries, in tokens, since the node started.",
                         MetricType::Gauge, rate, {}});
    }
  }
  return samples;
}

}  // namespace

absl::Status InitLogging(const std::string& level) {
  const spdlog::level::level_enum parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--log-level '", level, "' is not one of: trace, debug, info, warn, error, off"));
  }
  auto logger = spdlog::stderr_color_mt("duet");
  spdlog::set_default_logger(logger);
  spdlog::set_level(parsed);
  return absl::OkStatus();
}

void BlockTerminationSignals() {
  const sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

std::string DefaultNodeId(v1::NodeRole role) {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return absl::StrCat(RoleName(role), "-", host[0] != '\0' ? host : "localhost", "-", getpid());
}

int ServeNode(const NodeOptions& options, const std::string& node_id, const NodeHooks& hooks) {
  SignalWatcher signals;
  rpc::ServerOptions server_options;
  server_options.address = absl::StrCat(options.host, ":", options.port);
  NodeAdminService admin(options, node_id, hooks);
  grpc::Service* const services[] = {hooks.service, &admin};
  absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
      rpc::RpcServer::Start(server_options, services);
  if (!server.ok()) {
    std::fprintf(stderr, "%s: %s\n", node_id.c_str(), server.status().ToString().c_str());
    return 1;
  }
  std::printf("listening on %s\n", (*server)->address().c_str());
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  std::shared_ptr<metrics::CallbackCollector> collector;
  if (options.metrics_port >= 0) {
    absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> started =
        metrics::MetricsServer::Start(options.host, static_cast<int>(options.metrics_port));
    if (!started.ok()) {
      std::fprintf(stderr, "%s: --metrics-port: %s\n", node_id.c_str(),
                   started.status().ToString().c_str());
      (*server)->Shutdown(absl::ZeroDuration());
      hooks.stop();
      return 1;
    }
    metrics_server = std::move(*started);
    collector = std::make_shared<metrics::CallbackCollector>(
        metrics::ProcessLabels{node_id, RoleName(options.role), options.model_id},
        [&hooks] { return NodeSamples(hooks); });
    metrics_server->Register(collector);
    if (options.histograms != nullptr) metrics_server->Register(options.histograms->registry);
    std::printf("metrics on %s:%d\n", options.host.c_str(), metrics_server->port());
  }
  std::fflush(stdout);
  std::string address = options.advertise_address;
  if (address.empty()) {
    // A wildcard listen address is not dialable: advertise the machine's name instead.
    const bool wildcard = options.host == "0.0.0.0" || options.host == "[::]";
    char host[256] = {};
    if (wildcard && gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0') {
      address = absl::StrCat(host, ":", (*server)->port());
    } else {
      address = absl::StrCat(options.host, ":", (*server)->port());
    }
  }
  spdlog::info("{} node {} serving model {} at {} ({} KV blocks of {} tokens, {})",
               RoleName(options.role), node_id, options.model_id, address, hooks.total_kv_blocks,
               hooks.block_size, v1::KvDtype_Name(hooks.kv_dtype));

  std::unique_ptr<NodeControlClient> control;
  if (!options.router.empty()) {
    v1::RegisterRequest registration;
    registration.set_node_id(node_id);
    registration.set_role(options.role);
    registration.set_address(address);
    registration.set_model_id(options.model_id);
    registration.set_total_kv_blocks(hooks.total_kv_blocks);
    registration.set_block_size(hooks.block_size);
    registration.set_kv_dtype(hooks.kv_dtype);
    absl::StatusOr<std::unique_ptr<NodeControlClient>> client =
        NodeControlClient::Start(options.router, registration, hooks.load,
                                 absl::Milliseconds(options.heartbeat_interval_ms),
                                 hooks.kv_events);
    if (!client.ok()) {
      std::fprintf(stderr, "%s: --router: %s\n", node_id.c_str(),
                   client.status().ToString().c_str());
      (*server)->Shutdown(absl::ZeroDuration());
      hooks.stop();
      return 1;
    }
    control = std::move(*client);
  }

  signals.Await(1, absl::InfiniteDuration());
  spdlog::info("node {}: draining", node_id);
  (*server)->SetServing(false);
  admin.SetDraining();
  hooks.start_drain();
  if (control != nullptr) {
    control->SetDraining();
    // So the router stops assigning work here before the server stops answering.
    control->AwaitDrainingReported(absl::Milliseconds(2 * options.heartbeat_interval_ms) +
                                   absl::Seconds(1));
  }
  int exit_code = 0;
  while (!hooks.await_drained(absl::Milliseconds(100))) {
    if (signals.Await(2, absl::ZeroDuration())) {
      spdlog::warn("node {}: second signal: stopping without waiting for in-flight work", node_id);
      exit_code = 1;
      break;
    }
  }
  control.reset();
  (*server)->Shutdown(exit_code == 0 ? absl::Seconds(5) : absl::ZeroDuration());
  hooks.stop();
  spdlog::info("node {}: stopped", node_id);
  return exit_code;
}

}  // namespace duet::node

namespace duet::node {

int RunNodeMain(const std::string& program, v1::NodeRole role, std::vector<v1::NodeRole> roles,
                int argc, char** argv, const CreateNodeFn& create) {
  BlockTerminationSignals();
  const std::vector<std::string> args(argv + 1, argv + argc);
  bool help = false;
  std::string usage;
  absl::StatusOr<NodeOptions> options = ParseNodeOptions(program, role, roles, args, &help, &usage);
  if (!options.ok()) {
    // ArgParser's errors already name the program and point at --help; the others don't.
    const std::string message(options.status().message());
    if (message.rfind(program + ": ", 0) == 0) {
      std::fprintf(stderr, "%s\n", message.c_str());
    } else {
      std::fprintf(stderr, "%s: %s (--help lists the flags)\n", program.c_str(), message.c_str());
    }
    return 2;
  }
  if (help) {
    std::printf("%s", usage.c_str());
    return 0;
  }
  if (absl::Status s = InitLogging(options->log_level); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), std::string(s.message()).c_str());
    return 2;
  }
  absl::StatusOr<NodeModel> model = LoadNodeModel(options->model_path, options->model_id,
                                                  options->backend, EngineOptionsFor(*options));
  if (!model.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), model.status().ToString().c_str());
    return 1;
  }
  // Builds the kernels' pipelines before the node serves, so the first request does not pay
  // for them (seconds on lavapipe, enough to outlive a KV reservation's lease); a decoding node
  // that speculates builds its verify steps' too.
  const bool verifies =
      options->role != v1::NODE_ROLE_PREFILL && options->speculation.method != "off";
  const int64_t verify_rows = verifies ? options->speculation.adaptive.max_draft_tokens + 1 : 0;
  const absl::Time warm_start = absl::Now();
  if (absl::Status warm = WarmUp(*model->engine, verify_rows); !warm.ok()) {
    std::fprintf(stderr, "%s: engine warm-up failed: %s\n", program.c_str(),
                 warm.ToString().c_str());
    return 1;
  }
  spdlog::info("engine {} warmed up in {:.2f} s", model->engine->backend_name(),
               absl::ToDoubleSeconds(absl::Now() - warm_start));
  const std::string node_id =
      options->node_id.empty() ? DefaultNodeId(options->role) : options->node_id;
  if (options->metrics_port >= 0) {
    options->histograms = metrics::NodeHistograms::Create(
        {node_id, RoleName(options->role), options->model_id});
  }
  absl::StatusOr<NodeHooks> hooks = create(*options, node_id, *model);
  if (!hooks.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), hooks.status().ToString().c_str());
    return 1;
  }
  return ServeNode(*options, node_id, *hooks);
}

}  // namespace duet::node
