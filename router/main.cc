// duet-router: the cluster's public entry. Serves duet.v1.Duet to clients and duet.v1.NodeControl
// to nodes on one port, with health and reflection.
//
// Prints "listening on HOST:PORT" as the first line on stdout once it serves (logs go to
// stderr). SIGTERM/SIGINT: health turns NOT_SERVING, no new calls are accepted, in-flight streams
// get --shutdown-grace-ms to finish (then are cancelled), exit 0. Usage errors: one line on
// stderr, exit 2; runtime failures (model file, port): one line, exit 1.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/args.h"
#include "common/metrics/metrics.h"
#include "common/rpc/address.h"
#include "common/rpc/server.h"
#include "common/rpc/text_config.h"
#include "duet/v1/config.pb.h"
#include "router/router_metrics.h"
#include "router/router_options.h"
#include "router/router_service.h"
#include "router/served_model.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

constexpr int kExitRuntimeError = 1;
constexpr int kExitUsage = 2;

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "duet-router: %s\n", message.c_str());
  return code;
}

struct Flags {
  std::string model;
  std::string host = "127.0.0.1";
  int64_t port = 0;
  std::string config;
  std::string log_level = "info";
  std::vector<std::string> overrides;
  int64_t shutdown_grace_ms = 10000;
  int64_t metrics_port = -1;
};

bool SetLogLevel(const std::string& name) {
  for (const char* known : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    if (name == known) {
      spdlog::set_level(spdlog::level::from_str(name));
      return true;
    }
  }
  return false;
}

int Main(int argc, char** argv, const sigset_t& signals) {
  Flags flags;
  duet::ArgParser parser("duet-router");
  parser.AddString("model", &flags.model, "GGUF model file (tokenizer and config are read)");
  parser.AddString("host", &flags.host, "interface to listen on (default 127.0.0.1)");
  parser.AddInt("port", &flags.port, "TCP port; 0 = any free port (default: router.port, 50051)");
  parser.AddString("config", &flags.config, "duet.v1.ClusterConfig in protobuf text format");
  parser.AddRepeated("set", &flags.overrides, "override one config field, e.g. router.port=0");
  parser.AddString("log-level", &flags.log_level,
                   "trace, debug, info (default), warn, error, critical or off");
  parser.AddInt("metrics-port", &flags.metrics_port,
                "serve Prometheus metrics at http://HOST:PORT/metrics (0 = any free port; "
                "default: off)");
  parser.AddInt("shutdown-grace-ms", &flags.shutdown_grace_ms,
                "on SIGTERM/SIGINT, how long in-flight streams may run before they are cancelled");
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (absl::Status status = parser.Parse(args); !status.ok()) {
    return Fail(kExitUsage, std::string(status.message()));
  }
  if (parser.help_requested()) {
    std::printf("%s", parser.Usage().c_str());
    return 0;
  }
  if (!SetLogLevel(flags.log_level)) {
    return Fail(kExitUsage, absl::StrCat("--log-level must be one of trace, debug, info, warn, "
                                         "error, critical, off; got '",
                                         flags.log_level, "'"));
  }
  if (parser.WasSet("metrics-port") && (flags.metrics_port < 0 || flags.metrics_port > 65535)) {
    return Fail(kExitUsage,
                absl::StrCat("--metrics-port must be in [0, 65535], got ", flags.metrics_port));
  }
  if (flags.shutdown_grace_ms < 0) {
    return Fail(kExitUsage,
                absl::StrCat("--shutdown-grace-ms must be >= 0, got ", flags.shutdown_grace_ms));
  }

  duet::v1::ClusterConfig config;
  if (!flags.config.empty()) {
    if (absl::Status status = duet::rpc::LoadTextProto(flags.config, &config); !status.ok()) {
      return Fail(kExitUsage, absl::StrCat("--config: ", status.message()));
    }
  }
  if (absl::Status status = duet::rpc::ApplyOverrides(flags.overrides, &config); !status.ok()) {
    return Fail(kExitUsage, absl::StrCat("--set: ", status.message()));
  }
  if (parser.WasSet("model")) config.set_model_path(flags.model);
  if (parser.WasSet("host")) config.mutable_router()->set_listen_address(flags.host);
  if (parser.WasSet("port")) {
    if (flags.port < 0 || flags.port > 65535) {
      return Fail(kExitUsage, absl::StrCat("--port must be in [0, 65535], got ", flags.port));
    }
    config.mutable_router()->set_port(static_cast<int32_t>(flags.port));
  }
  if (config.model_path().empty()) {
    return Fail(kExitUsage, "--model FILE is required (or model_path in --config)");
  }
  absl::StatusOr<duet::router::RouterOptions> options =
      duet::router::RouterOptionsFromConfig(config);
  if (!options.ok()) return Fail(kExitUsage, absl::StrCat("config: ", options.status().message()));

  absl::StatusOr<std::unique_ptr<duet::router::ServedModel>> model =
      duet::router::LoadServedModel(config.model_path(), config.model_id());
  if (!model.ok()) return Fail(kExitRuntimeError, std::string(model.status().message()));

  duet::router::Router router(model->get(), *options);
  // Metrics: the request histograms and counters, plus gauges read at scrape time.
  std::unique_ptr<duet::metrics::MetricsServer> metrics_server;
  std::unique_ptr<duet::router::RouterMetrics> metrics;
  std::shared_ptr<duet::metrics::CallbackCollector> gauges;
  if (flags.metrics_port >= 0) {
    absl::StatusOr<std::unique_ptr<duet::metrics::MetricsServer>> started =
        duet::metrics::MetricsServer::Start(config.router().listen_address(),
                                            static_cast<int>(flags.metrics_port));
    if (!started.ok()) return Fail(kExitRuntimeError, std::string(started.status().message()));
    metrics_server = std::move(*started);
    const duet::metrics::ProcessLabels labels{"router", "router", (*model)->id};
    metrics = std::make_unique<duet::router::RouterMetrics>(labels);
    router.state().set_metrics(metrics.get());
    metrics_server->Register(metrics->registry());
    duet::router::RouterState* state = &router.state();
    gauges = std::make_shared<duet::metrics::CallbackCollector>(labels, [state] {
      using prometheus::MetricType;
      const int64_t queued = state->num_queued();
      std::vector<duet::metrics::Sample> samples = {
          {"duet:num_requests_running", "Requests streaming tokens.", MetricType::Gauge,
           static_cast<double>(std::max<int64_t>(0, state->num_inflight() - queued)), {}},
          {"duet:num_requests_waiting", "Requests admitted, waiting for their first token.",
           MetricType::Gauge, static_cast<double>(queued), {}},
      };
      for (const duet::router::NodeSnapshot& node : state->registry().Snapshot()) {
        samples.push_back({"duet:node_up", "1 when the node is live and not draining.",
                           MetricType::Gauge, node.live && !node.draining ? 1.0 : 0.0,
                           {{"target_node", node.spec.id.value()},
                            {"target_role", duet::router::NodeRoleName(node.spec.role)}}});
      }
      return samples;
    });
    metrics_server->Register(gauges);
  }
  duet::rpc::ServerOptions server_options;
  server_options.address =
      duet::rpc::FormatHostPort({config.router().listen_address(), config.router().port()});
  absl::StatusOr<std::unique_ptr<duet::rpc::RpcServer>> server =
      duet::rpc::RpcServer::Start(server_options, router.services());
  if (!server.ok()) return Fail(kExitRuntimeError, std::string(server.status().message()));
  std::printf("listening on %s\n", (*server)->address().c_str());
  if (metrics_server != nullptr) {
    std::printf("metrics on %s:%d\n", config.router().listen_address().c_str(),
                metrics_server->port());
  }
  std::fflush(stdout);
  spdlog::info("serving model '{}' ({}, context {}) on {}", (*model)->id,
               (*model)->config.architecture_name, (*model)->config.context_length,
               (*server)->address());

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("{}: shutting down (grace {} ms)", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
               flags.shutdown_grace_ms);
  (*server)->SetServing(false);
  // Nodes' heartbeats stop reaching a router that no longer accepts calls; do not fail their
  // requests for it.
  router.StopSweeper();
  (*server)->Shutdown(absl::Milliseconds(flags.shutdown_grace_ms));
  router.WaitForIdle();
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Blocked in every thread (gRPC's included, which inherit the mask) and taken by sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  spdlog::set_default_logger(spdlog::stderr_color_mt("duet-router"));
  return Main(argc, argv, signals);
}
