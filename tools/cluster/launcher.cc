#include "tools/cluster/launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/base/status.h"
#include "common/rpc/channel.h"
#include "common/rpc/status_convert.h"
#include "duet/v1/internal.grpc.pb.h"

namespace duet::cluster {
namespace {

constexpr absl::Duration kPollInterval = absl::Milliseconds(20);
constexpr char kListening[] = "listening on ";

bool IsExecutable(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

std::string SelfDirectory() {
  char buffer[4096];
  const ssize_t n = readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (n <= 0) return ".";
  std::string path(buffer, static_cast<size_t>(n));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

ProcessExit ExitFromStatus(const std::string& name, int status) {
  ProcessExit exit;
  exit.name = name;
  if (WIFSIGNALED(status)) {
    exit.term_signal = WTERMSIG(status);
    exit.exit_code = 128 + exit.term_signal;
  } else {
    exit.exit_code = WEXITSTATUS(status);
  }
  return exit;
}

// Reads one line from `fd` until `deadline`. Returns the line (without '\n'); "" with *eof set
// when the writer closed the pipe; DEADLINE_EXCEEDED when no full line came in time.
absl::StatusOr<std::string> ReadLine(int fd, absl::Time deadline, bool* eof) {
  std::string line;
  *eof = false;
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("no line in time");
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    char c = 0;
    const ssize_t n = read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *eof = true;
      return line;
    }
    if (c == '\n') return line;
    line.push_back(c);
  }
}

}  // namespace

std::string ProcessExit::Describe() const {
  if (term_signal != 0) {
    return absl::StrCat(name, " was killed by signal ", term_signal, " (", strsignal(term_signal),
                        ")");
  }
  return absl::StrCat(name, " exited with code ", exit_code);
}

absl::StatusOr<std::string> FindExecutable(const std::string& name, const std::string& subdir,
                                           const std::string& bin_dir) {
  std::vector<std::string> candidates;
  if (!bin_dir.empty()) {
    candidates.push_back(absl::StrCat(bin_dir, "/", name));
  } else {
    const std::string self = SelfDirectory();
    candidates.push_back(absl::StrCat(self, "/", name));
    // The build tree: tools/duet/duet and tests/<x>/<test> sit two levels below the root.
    candidates.push_back(absl::StrCat(self, "/../../", subdir, "/", name));
    if (const char* path = std::getenv("PATH"); path != nullptr) {
      for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
        candidates.push_back(absl::StrCat(dir, "/", name));
      }
    }
  }
  for (const std::string& candidate : candidates) {
    if (IsExecutable(candidate)) return candidate;
  }
  return absl::NotFoundError(absl::StrCat("cannot find the executable ", name, " (looked in ",
                                          absl::StrJoin(candidates, ", "),
                                          "); build it, or name its directory with --bin-dir"));
}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(const ClusterSpec& spec) {
  if (spec.model_path.empty()) return absl::InvalidArgumentError("a model file is required");
  if (spec.num_prefill < 0 || spec.num_decode < 0 || spec.num_colocated < 0) {
    return absl::InvalidArgumentError("node counts must be >= 0");
  }
  if (spec.num_decode + spec.num_colocated == 0) {
    return absl::InvalidArgumentError("the cluster needs at least one decode or colocated node");
  }
  if (spec.num_decode > 0 && spec.num_prefill == 0) {
    return absl::InvalidArgumentError("decode nodes need at least one prefill node");
  }
  if (spec.router_port < 0 || spec.router_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("the router port must be in [0, 65535], got ", spec.router_port));
  }
  absl::StatusOr<std::string> router_bin = FindExecutable("duet-router", "router", spec.bin_dir);
  if (!router_bin.ok()) return router_bin.status();
  absl::StatusOr<std::string> prefill_bin =
      FindExecutable("duet-prefill-node", "prefill_node", spec.bin_dir);
  if (!prefill_bin.ok()) return prefill_bin.status();
  absl::StatusOr<std::string> decode_bin =
      FindExecutable("duet-decode-node", "decode_node", spec.bin_dir);
  if (!decode_bin.ok()) return decode_bin.status();

  // A stopping router waits for its clients' connections to close, and an idle gRPC client
  // notices the server's GOAWAY only at its backup poll (default every 5 s): poll faster in
  // the nodes (children inherit the environment), so a cluster stops in well under a second.
  setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "100", /*overwrite=*/0);
  // A node pinned to one CPU must not run lavapipe's default of one worker thread per CPU:
  // its threads would take turns on that CPU (start-up alone took > 5 min so, 35 s with one).
  if (spec.pin_cpus) setenv("LP_NUM_THREADS", "1", /*overwrite=*/0);
  std::unique_ptr<Cluster> cluster(new Cluster());
  cluster->spec_ = spec;
  std::vector<std::string> common = {"--model", spec.model_path, "--log-level", spec.log_level};
  if (spec.metrics) common.insert(common.end(), {"--metrics-port", "0"});
  if (!spec.config_path.empty()) {
    common.push_back("--config");
    common.push_back(spec.config_path);
  }
  for (const std::string& o : spec.overrides) {
    common.push_back("--set");
    common.push_back(o);
  }
  const absl::Time deadline = absl::Now() + spec.ready_timeout;
  auto place = [&spec](const std::string& name) {
    ClusterSpec::Placement p = spec.placement ? spec.placement(name) : ClusterSpec::Placement{};
    if (p.host.empty()) p.host = spec.host;
    return p;
  };
  int cpu = 0;
  const ClusterSpec::Placement router_place = place("router");
  std::vector<std::string> router_args = common;
  router_args.insert(router_args.end(),
                     {"--host", router_place.host, "--port", absl::StrCat(spec.router_port)});
  router_args.insert(router_args.end(), spec.router_args.begin(), spec.router_args.end());
  absl::Status launched = cluster->Launch(spec, "router", "router", *router_bin, router_args,
                                          /*cpu=*/-1, router_place.netns);
  if (launched.ok()) {
    // Nodes need the router's address for --router.
    bool eof = false;
    Child& router = cluster->children_.front();
    absl::StatusOr<std::string> line = ReadLine(router.stdout_fd, deadline, &eof);
    if (!line.ok() || eof || line->rfind(kListening, 0) != 0) {
      launched = absl::UnavailableError(
          line.ok() ? "the router did not start (its error is above)"
                    : "the router printed no 'listening on' line in time");
    } else {
      router.process.address = line->substr(sizeof(kListening) - 1);
      cluster->router_address_ = router.process.address;
      if (spec.metrics) launched = cluster->ReadMetricsLine(router, deadline);
    }
  }
  struct Group {
    int count;
    const char* role;
    const std::string* binary;
    const std::vector<std::string>* args;
  };
  const Group groups[] = {{spec.num_prefill, "prefill", &*prefill_bin, &spec.prefill_args},
                          {spec.num_decode, "decode", &*decode_bin, &spec.decode_args},
                          {spec.num_colocated, "colocated", &*decode_bin, &spec.colocated_args}};
  for (const Group& group : groups) {
    for (int i = 0; launched.ok() && i < group.count; ++i) {
      const std::string name = absl::StrCat(group.role, "-", i);
      const ClusterSpec::Placement node_place = place(name);
      std::vector<std::string> args = common;
      args.insert(args.end(), {"--host", node_place.host, "--port", "0", "--node-id", name,
                               "--router", cluster->router_address_});
      if (std::string(group.role) == "colocated") args.insert(args.end(), {"--role", "colocated"});
      args.insert(args.end(), spec.node_args.begin(), spec.node_args.end());
      args.insert(args.end(), group.args->begin(), group.args->end());
      launched =
          cluster->Launch(spec, name, group.role, *group.binary, args, cpu++, node_place.netns);
    }
  }
  if (launched.ok()) launched = cluster->AwaitReady(spec, deadline);
  if (!launched.ok()) {
    cluster->Stop(absl::Seconds(5));
    return launched;
  }
  return cluster;
}

absl::Status Cluster::Launch(const ClusterSpec& spec, const std::string& name,
                             const std::string& role, const std::string& binary,
                             std::vector<std::string> args, int cpu,
                             const std::string& netns) {
  const std::vector<std::string> flags = args;
  args.insert(args.begin(), binary);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int log_fd = -1;
  if (!spec.log_dir.empty()) {
    const std::string log_path = absl::StrCat(spec.log_dir, "/", name, ".log");
    log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot write ", log_path, ": ", std::strerror(errno)));
    }
  }
  int netns_fd = -1;
  if (!netns.empty()) {
    const std::string netns_path = absl::StrCat("/run/netns/", netns);
    netns_fd = open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (netns_fd < 0) {
      if (log_fd >= 0) close(log_fd);
      return absl::NotFoundError(absl::StrCat("cannot open the network namespace ", netns_path,
                                              " for ", name, ": ", std::strerror(errno)));
    }
  }
  auto close_files = [&] {
    if (log_fd >= 0) close(log_fd);
    if (netns_fd >= 0) close(netns_fd);
  };
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    close_files();
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  const int num_cpus = static_cast<int>(std::thread::hardware_concurrency());
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    close_files();
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec.
    setpgid(0, 0);  // Ctrl-C reaches the launcher, which stops the cluster in order
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(126);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (spec.pin_cpus && num_cpus > 0 && cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu % num_cpus, &set);
      sched_setaffinity(0, sizeof(set), &set);
    }
    // The child is single-threaded, so setns moves the whole process to the namespace.
    if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) != 0) _exit(125);
    dup2(fds[1], STDOUT_FILENO);
    if (log_fd >= 0) dup2(log_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  close_files();
  Child child;
  child.process = {name, role, pid, "", ""};
  child.stdout_fd = fds[0];
  child.binary = binary;
  child.args = flags;
  child.cpu = cpu;
  child.netns = netns;
  children_.push_back(std::move(child));
  return absl::OkStatus();
}

absl::Status Cluster::AwaitReady(const ClusterSpec& spec, absl::Time deadline) {
  auto exited = [this](Child& child) -> std::optional<ProcessExit> {
    int status = 0;
    if (child.reaped || waitpid(child.process.pid, &status, WNOHANG) != child.process.pid) {
      return std::nullopt;
    }
    child.reaped = true;
    return ExitFromStatus(child.process.name, status);
  };
  // 1. Every node's "listening on" line (the router's was read before the nodes started).
  for (Child& child : children_) {
    if (!child.process.address.empty()) continue;
    bool eof = false;
    absl::StatusOr<std::string> line = ReadLine(child.stdout_fd, deadline, &eof);
    if (!line.ok()) {
      return absl::DeadlineExceededError(absl::StrCat(
          child.process.name, " did not start within ", absl::FormatDuration(spec.ready_timeout)));
    }
    if (eof || line->rfind(kListening, 0) != 0) {
      int status = 0;
      waitpid(child.process.pid, &status, 0);
      child.reaped = true;
      return absl::UnavailableError(absl::StrCat(
          ExitFromStatus(child.process.name, status).Describe(), " during startup"));
    }
    child.process.address = line->substr(sizeof(kListening) - 1);
    if (spec.metrics) DUET_RETURN_IF_ERROR(ReadMetricsLine(child, deadline));
  }
  // 2. Every process answers its health check.
  for (Child& child : children_) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        rpc::CreateChannel(child.process.address);
    if (!channel.ok()) return channel.status();
    while (true) {
      if (std::optional<ProcessExit> exit = exited(child)) {
        return absl::UnavailableError(absl::StrCat(exit->Describe(), " during startup"));
      }
      absl::StatusOr<rpc::ServingStatus> health =
          rpc::CheckHealth(*channel, "", absl::Seconds(1));
      if (health.ok() && *health == grpc::health::v1::HealthCheckResponse::SERVING) break;
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat(child.process.name, " at ", child.process.address,
                         " is not healthy: ", health.ok() ? "NOT_SERVING" : health.status().ToString()));
      }
      absl::SleepFor(kPollInterval);
    }
  }
  // 3. The router knows every node as live.
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(router_address_);
  if (!channel.ok()) return channel.status();
  auto stub = v1::NodeControl::NewStub(*channel);
  std::string missing;
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    v1::ListNodesResponse nodes;
    const grpc::Status status = stub->ListNodes(&context, v1::ListNodesRequest(), &nodes);
    missing.clear();
    for (const Child& child : children_) {
      if (child.process.role == "router") continue;
      bool live = false;
      for (const v1::NodeInfo& node : nodes.nodes()) {
        live = live || (node.node_id() == child.process.name && node.live() && !node.draining());
      }
      if (!live) absl::StrAppend(&missing, missing.empty() ? "" : ", ", child.process.name);
    }
    if (status.ok() && missing.empty()) return absl::OkStatus();
    for (Child& child : children_) {
      if (std::optional<ProcessExit> exit = exited(child)) {
        return absl::UnavailableError(absl::StrCat(exit->Describe(), " during startup"));
      }
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("the router did not list every node within ",
                       absl::FormatDuration(spec.ready_timeout), "; missing: ",
                       status.ok() ? missing : rpc::FromGrpcStatus(status).ToString()));
    }
    absl::SleepFor(kPollInterval);
  }
}

absl::Status Cluster::ReadMetricsLine(Child& child, absl::Time deadline) {
  constexpr char kMetrics[] = "metrics on ";
  bool eof = false;
  absl::StatusOr<std::string> line = ReadLine(child.stdout_fd, deadline, &eof);
  if (!line.ok() || eof || line->rfind(kMetrics, 0) != 0) {
    return absl::UnavailableError(
        absl::StrCat(child.process.name, " printed no 'metrics on' line"));
  }
  child.process.metrics_address = line->substr(sizeof(kMetrics) - 1);
  return absl::OkStatus();
}

Cluster::~Cluster() { Stop(absl::Seconds(20)); }

std::vector<ClusterProcess> Cluster::processes() const {
  std::vector<ClusterProcess> out;
  for (const Child& child : children_) out.push_back(child.process);
  return out;
}

const ClusterProcess* Cluster::Find(const std::string& name) const {
  for (const Child& child : children_) {
    if (child.process.name == name) return &child.process;
  }
  return nullptr;
}

absl::Status Cluster::RestartNode(const std::string& name, absl::Duration grace,
                                  ProcessExit* old_exit) {
  size_t index = children_.size();
  for (size_t i = 0; i < children_.size(); ++i) {
    if (children_[i].process.name == name) index = i;
  }
  if (index == children_.size() || children_[index].process.role == "router") {
    return absl::NotFoundError(absl::StrCat("no node called '", name, "' in the cluster"));
  }
  std::vector<ProcessExit> exits;
  StopGroup({index}, grace, &exits);
  if (old_exit != nullptr && !exits.empty()) *old_exit = exits.front();
  Child old = std::move(children_[index]);
  if (old.stdout_fd >= 0) close(old.stdout_fd);
  DUET_RETURN_IF_ERROR(
      Launch(spec_, old.process.name, old.process.role, old.binary, old.args, old.cpu, old.netns));
  children_[index] = std::move(children_.back());
  children_.pop_back();
  return AwaitReady(spec_, absl::Now() + spec_.ready_timeout);
}

absl::Status Cluster::Signal(const std::string& name, int signal) {
  for (const Child& child : children_) {
    if (child.process.name != name) continue;
    if (child.reaped) {
      return absl::FailedPreconditionError(absl::StrCat(name, " has exited already"));
    }
    kill(child.process.pid, signal);
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("no process called '", name, "' in the cluster"));
}

std::optional<ProcessExit> Cluster::AwaitExit(const std::string& name, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (Child& child : children_) {
    if (child.process.name != name || child.reaped) continue;
    while (true) {
      int status = 0;
      if (waitpid(child.process.pid, &status, WNOHANG) == child.process.pid) {
        child.reaped = true;
        return ExitFromStatus(name, status);
      }
      if (absl::Now() > deadline) return std::nullopt;
      absl::SleepFor(kPollInterval);
    }
  }
  return std::nullopt;
}

std::optional<ProcessExit> Cluster::PollExited() {
  for (Child& child : children_) {
    int status = 0;
    if (!child.reaped && waitpid(child.process.pid, &status, WNOHANG) == child.process.pid) {
      child.reaped = true;
      return ExitFromStatus(child.process.name, status);
    }
  }
  return std::nullopt;
}

void Cluster::StopGroup(const std::vector<size_t>& indices, absl::Duration grace,
                        std::vector<ProcessExit>* exits) {
  for (size_t i : indices) {
    if (!children_[i].reaped) kill(children_[i].process.pid, SIGTERM);
  }
  const absl::Time deadline = absl::Now() + grace;
  bool killed = false;
  while (true) {
    bool running = false;
    for (size_t i : indices) {
      Child& child = children_[i];
      if (child.reaped) continue;
      int status = 0;
      if (waitpid(child.process.pid, &status, killed ? 0 : WNOHANG) == child.process.pid) {
        child.reaped = true;
        exits->push_back(ExitFromStatus(child.process.name, status));
      } else {
        running = true;
      }
    }
    if (!running) return;
    if (!killed && absl::Now() > deadline) {
      for (size_t i : indices) {
        if (!children_[i].reaped) kill(children_[i].process.pid, SIGKILL);
      }
      killed = true;
      continue;
    }
    absl::SleepFor(kPollInterval);
  }
}

std::vector<ProcessExit> Cluster::Stop(absl::Duration grace) {
  std::vector<ProcessExit> exits;
  // The router first (in start order), then the nodes at once: the router stops taking
  // requests and lets its streams finish while the nodes drain theirs.
  std::vector<size_t> all;
  for (size_t i = 0; i < children_.size(); ++i) all.push_back(i);
  StopGroup(all, grace, &exits);
  for (Child& child : children_) {
    if (child.stdout_fd >= 0) close(child.stdout_fd);
    child.stdout_fd = -1;
  }
  return exits;
}

}  // namespace duet::cluster
