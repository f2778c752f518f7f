// A local Duet cluster as separate processes on one machine: the router, P prefill nodes, D
// decode nodes and C colocated nodes, each an executable of this build (duet-router,
// duet-prefill-node, duet-decode-node) started with its port 0 (the router: the port asked
// for), so several clusters never collide.
//
// Start() returns once the cluster serves: every process printed "listening on HOST:PORT", its
// gRPC health check answers SERVING, and the router lists every node as live. Stop() (and the
// destructor) sends SIGTERM to the router (no new requests, in-flight streams finish) and then
// to the nodes (they drain: in-flight work finishes), and SIGKILLs what is still running after
// the grace period.
// Children get SIGTERM from the kernel if the launching thread dies (PR_SET_PDEATHSIG), so a
// killed launcher leaves no orphans. Children inherit stderr (their logs); their stdout carries
// only the "listening on" line.
//
// Used by `duet cluster`, `duet bench --cluster` and the cluster integration tests.
//
// Thread safety: one thread drives a Cluster.
#ifndef DUET_TOOLS_CLUSTER_LAUNCHER_H_
#define DUET_TOOLS_CLUSTER_LAUNCHER_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace duet::cluster {

struct ClusterSpec {
  // GGUF model every process loads. Required.
  std::string model_path;
  // Directory holding duet-router, duet-prefill-node and duet-decode-node; "" = look next to
  // this executable, then in this build tree's router/, prefill_node/, decode_node/, then PATH.
  std::string bin_dir;
  int num_prefill = 2;
  int num_decode = 1;
  int num_colocated = 0;
  std::string host = "127.0.0.1";
  // The router's public port; 0 = any free port.
  int router_port = 0;
  // Passed to every process as --config / --set.
  std::string config_path;
  std::vector<std::string> overrides;
  // Extra flags for the router, for every node, for prefill / decode / colocated nodes.
  std::vector<std::string> router_args;
  std::vector<std::string> node_args;
  std::vector<std::string> prefill_args;
  std::vector<std::string> decode_args;
  std::vector<std::string> colocated_args;
  // --log-level of every process.
  std::string log_level = "warn";
  // How long startup may take (model loading, Vulkan pipeline builds) before Start() fails.
  absl::Duration ready_timeout = absl::Seconds(120);
  // Pin node i (in start order: prefill, decode, colocated) to CPU i mod (number of CPUs),
  // taskset-like, for measurements; the router (light work) is not pinned.
  bool pin_cpus = false;
  // Every process serves Prometheus metrics on a free port (--metrics-port 0).
  bool metrics = false;
  // Non-empty: each process's stderr (its log) goes to <log_dir>/<name>.log instead of ours.
  std::string log_dir;
  // Where each process runs, for tests that give every process its own "host": a network
  // namespace (a name under /run/netns, as `ip netns add` makes them; "" = the launcher's) and
  // the address it listens on and peers dial ("" = `host`). Called once per process name
  // ("router", "prefill-0", ...); unset = every process here, on `host`. The launcher itself
  // must be able to reach every such address (health checks, the router's node list).
  struct Placement {
    std::string netns;
    std::string host;
  };
  std::function<Placement(const std::string& name)> placement;
};

// One started process.
struct ClusterProcess {
  std::string name;  // "router", "prefill-0", "decode-1", "colocated-0"
  std::string role;  // "router", "prefill", "decode", "colocated"
  pid_t pid = -1;
  std::string address;  // from its "listening on" line
  std::string metrics_address;  // from its "metrics on" line (ClusterSpec::metrics)
};

// How a process ended.
struct ProcessExit {
  std::string name;
  int exit_code = 0;    // when it exited
  int term_signal = 0;  // when a signal killed it (then exit_code is 128 + signal)
  std::string Describe() const;
};

class Cluster {
 public:
  // Starts the processes and waits until the cluster serves (see the file comment). Errors name
  // the process: a missing executable (NOT_FOUND), one that exited during startup (with its
  // exit code; its stderr explains), or one not ready within ready_timeout (DEADLINE_EXCEEDED).
  // On error every started process is stopped.
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(const ClusterSpec& spec);

  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // The router's public address, "host:port".
  const std::string& router_address() const { return router_address_; }
  std::vector<ClusterProcess> processes() const;
  // The process called `name`, or nullptr.
  const ClusterProcess* Find(const std::string& name) const;

  // Rolling restart of one node: SIGTERM (it drains: no new work, in-flight work finishes),
  // waits for it to exit (SIGKILL after `grace`), starts it again with the same flags and node
  // id, and returns once it is healthy and registered. The exit code of the old process is in
  // *old_exit. NOT_FOUND for an unknown name; the router cannot be restarted this way.
  absl::Status RestartNode(const std::string& name, absl::Duration grace, ProcessExit* old_exit);

  // Sends `signal` to the process called `name`. NOT_FOUND for an unknown name.
  absl::Status Signal(const std::string& name, int signal);
  // Reaps the process called `name` once it exits (at most `timeout`); nullopt if it is still
  // running then.
  std::optional<ProcessExit> AwaitExit(const std::string& name, absl::Duration timeout);
  // A process that has exited since the last call (reaped), or nullopt when all still run.
  std::optional<ProcessExit> PollExited();

  // Stops the cluster (SIGTERM to the router, then the nodes; SIGKILL after `grace`). Returns the
  // exits of every process not reaped before, in start order. Idempotent.
  std::vector<ProcessExit> Stop(absl::Duration grace = absl::Seconds(20));

 private:
  Cluster() = default;
  absl::Status Launch(const ClusterSpec& spec, const std::string& name, const std::string& role,
                      const std::string& binary, std::vector<std::string> args, int cpu,
                      const std::string& netns);
  absl::Status AwaitReady(const ClusterSpec& spec, absl::Time deadline);
  struct Child;
  absl::Status ReadMetricsLine(Child& child, absl::Time deadline);
  void StopGroup(const std::vector<size_t>& indices, absl::Duration grace,
                 std::vector<ProcessExit>* exits);

  struct Child {
    ClusterProcess process;
    int stdout_fd = -1;
    bool reaped = false;
    // How it was started (for RestartNode).
    std::string binary;
    std::vector<std::string> args;
    int cpu = 0;
    std::string netns;
  };
  ClusterSpec spec_;
  std::vector<Child> children_;
  std::string router_address_;
};

// The path of `name` (an executable of this build; see ClusterSpec::bin_dir). NOT_FOUND listing
// the places searched.
absl::StatusOr<std::string> FindExecutable(const std::string& name, const std::string& subdir,
                                           const std::string& bin_dir);

}  // namespace duet::cluster

#endif  // DUET_TOOLS_CLUSTER_LAUNCHER_H_
