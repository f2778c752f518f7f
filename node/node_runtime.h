// The process around a node service, shared by duet-prefill-node and duet-decode-node:
// logging, termination signals, the gRPC server (health + reflection), the "listening on" line,
// registration and heartbeats, and the drain on SIGTERM.
//
// Lifecycle of ServeNode:
//   1. starts the server on options.host:options.port and prints "listening on HOST:PORT" as
//      the first line of stdout (flushed);
//   2. with --router: registers and heartbeats (node/node_control.h) with the node's load;
//   3. on SIGTERM or SIGINT: health NOT_SERVING, a heartbeat with draining = true, new work
//      refused (UNAVAILABLE) while in-flight work -- KV transfers included -- finishes; then the
//      server shuts down, the node stops, and ServeNode returns 0. A second signal while
//      draining gives up waiting and returns 1.
#ifndef DUET_NODE_NODE_RUNTIME_H_
#define DUET_NODE_NODE_RUNTIME_H_

#include <grpcpp/impl/service_type.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "duet/v1/internal.pb.h"
#include "node/node_model.h"
#include "node/node_options.h"

namespace duet::node {

// Sets spdlog's default logger to stderr (stdout carries the "listening on" line) at `level`.
// INVALID_ARGUMENT for an unknown level.
absl::Status InitLogging(const std::string& level);

// Blocks SIGTERM and SIGINT in the calling thread. Call it first in main(), before any thread
// starts, so that every thread inherits the mask and ServeNode's sigwait receives them.
void BlockTerminationSignals();

// "<role>-<hostname>-<pid>": the node id when --node-id is not given.
std::string DefaultNodeId(v1::NodeRole role);

// What ServeNode needs of a node service. Every function must be thread-safe.
struct NodeHooks {
  grpc::Service* service = nullptr;  // not owned
  int64_t total_kv_blocks = 0;
  int32_t block_size = 0;
  v1::KvDtype kv_dtype = v1::KV_DTYPE_UNSPECIFIED;
  std::function<v1::NodeLoad()> load;
  // Adds event counts to a NodeAdmin status (may be empty).
  std::function<void(google::protobuf::Map<std::string, int64_t>*)> counters;
  // Prefix-cache changes for the router (NodeControlClient::KvEventsFn); empty = no cache.
  std::function<v1::KvCacheEvents(bool snapshot)> kv_events;
  std::function<void()> start_drain;                  // refuse new work
  std::function<bool(absl::Duration)> await_drained;  // true once no work is in flight
  std::function<void()> stop;                         // after the server shut down
};

// Serves `hooks.service` until a termination signal, then drains (see the file comment).
// REQUIRES: BlockTerminationSignals() ran in main. Returns the process exit code; errors
// starting the server or the router client are printed to stderr (exit code 1).
int ServeNode(const NodeOptions& options, const std::string& node_id, const NodeHooks& hooks);

// Hooks for a node type with the lifecycle methods of DecodeNode / PrefillNode. The hooks share
// ownership of the node, so it lives as long as they do.
template <typename NodeT>
NodeHooks HooksFor(std::shared_ptr<NodeT> node) {
  NodeHooks hooks;
  hooks.service = node.get();
  hooks.total_kv_blocks = node->total_kv_blocks();
  hooks.block_size = node->block_size();
  hooks.kv_dtype = node->kv_dtype();
  hooks.load = [node] { return node->Load(); };
  hooks.counters = [node](google::protobuf::Map<std::string, int64_t>* counters) {
    node->AddCounters(counters);
  };
  if constexpr (requires { node->TakeKvEvents(true); }) {
    hooks.kv_events = [node](bool snapshot) { return node->TakeKvEvents(snapshot); };
  }
  hooks.start_drain = [node] { node->StartDrain(); };
  hooks.await_drained = [node](absl::Duration timeout) { return node->AwaitDrained(timeout); };
  hooks.stop = [node] { node->Stop(); };
  return hooks;
}

// Builds the node service over the loaded model (which outlives the returned hooks).
using CreateNodeFn = std::function<absl::StatusOr<NodeHooks>(
    const NodeOptions& options, const std::string& node_id, const NodeModel& model)>;

// The whole main() of a node executable: blocks termination signals, parses the flags (`role`
// is the default role, `roles` the ones --role may pick; --help prints the usage), sets up
// logging, loads the model and engine, warms the engine up (duet::WarmUp: pipelines are built
// before the node serves), picks the node id, calls `create`, then ServeNode.
// Exit codes: ServeNode's, 2 for bad flags, 1 when the model or the node cannot start; every
// error is one line on stderr naming `program`.
int RunNodeMain(const std::string& program, v1::NodeRole role, std::vector<v1::NodeRole> roles,
                int argc, char** argv, const CreateNodeFn& create);

}  // namespace duet::node

#endif  // DUET_NODE_NODE_RUNTIME_H_
