// The router's view of the cluster's nodes: who is registered, who is alive, how loaded each one
// is, and which node a new request goes to. Pure logic: no sockets, time from an injected Clock.
//
// Liveness: a node is live from Register() until it is silent (no Register/Heartbeat) for longer
// than Options::heartbeat_timeout. A silent node takes no new work at once (Pick* skip it) and
// is removed by the next ExpireSilentNodes(), which reports it so the router can fail the
// requests running on it. A removed node is unknown: its next Heartbeat() returns false and it
// must Register() again. Registering a known id replaces the old entry (the node restarted) and
// reports the old entry as lost too. Each registration gets a new `incarnation`, so work
// assigned to a previous life of a node is never confused with the current one.
//
// Load accounting: each Heartbeat() carries the node's own counts (free KV blocks, running
// sequences, queued prefill tokens). Between heartbeats the registry adds what it assigned
// itself (`pending` charges), so a burst of requests spreads over nodes instead of piling onto
// the one that looked emptiest at the last heartbeat. Each heartbeat replaces the reported counts
// and clears the pending charges (the node's report now includes that work).
//
// KV-aware routing: nodes with a prefix cache also report which blocks (their chained prefix
// hashes, common/kv/block_hash.h) they stored and evicted; the registry keeps an approximate
// set per node -- it also adds a prompt's blocks to the node it routes the prompt to, so a
// burst with one prefix lands together before the next heartbeat -- and PickPrefill scores
// nodes by the cached length of a prompt's prefix against their load (RoutingPolicy).
//
// Thread safety: all methods are thread-safe (one internal mutex).
#ifndef DUET_ROUTER_NODE_REGISTRY_H_
#define DUET_ROUTER_NODE_REGISTRY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/base/clock.h"
#include "common/base/ids.h"

namespace duet::router {

enum class NodeRole { kPrefill, kDecode, kColocated };

// How PickPrefill chooses among live prefill nodes.
//   kRoundRobin: in turn (by id), ignoring load and caches.
//   kLeastLoad: the fewest queued prompt tokens (reported + assigned since).
//   kCacheAware: the lowest cost = overlap_weight x the prompt tokens the node would compute
//     (those past its cached prefix of the prompt) + its queued prompt tokens -- an estimate of
//     the time to the request's first token, in the spirit of Dynamo's KV router cost; a long
//     cached prefix wins unless its node is loaded enough to lose the saving (SGLang's balance
//     fallback falls out of the same sum).
enum class RoutingPolicy { kRoundRobin, kLeastLoad, kCacheAware };
// "round_robin", "least_load", "cache_aware".
const char* RoutingPolicyName(RoutingPolicy policy);

// "prefill", "decode", "colocated".
const char* NodeRoleName(NodeRole role);

// What a node announces when it registers.
struct NodeSpec {
  NodeId id;  // non-empty, unique in the cluster
  NodeRole role = NodeRole::kDecode;
  std::string address;  // "host:port" the router dials; non-empty
  std::string model_id;
  // KV pool size in blocks and tokens per block. Decode and colocated nodes: both > 0.
  // Prefill nodes: >= 0 (their prefix cache; not used for selection).
  int64_t total_kv_blocks = 0;
  int32_t block_size = 0;
};

// A node's own load report (duet.v1.NodeLoad).
struct NodeLoadReport {
  int64_t queued_prefill_tokens = 0;
  int32_t running_sequences = 0;
  int32_t waiting_sequences = 0;
  int64_t free_kv_blocks = 0;
  int64_t total_kv_blocks = 0;  // 0 = unchanged
  int32_t active_requests = 0;
};

// A node chosen for one request, with the charge the registry booked against it.
struct NodeAssignment {
  NodeId id;
  NodeRole role = NodeRole::kDecode;
  std::string address;
  uint64_t incarnation = 0;
  int32_t block_size = 0;
  int64_t charged_blocks = 0;  // decode / colocated: ceil(num_prompt_tokens / block_size)
  int64_t charged_tokens = 0;  // prefill: the prompt tokens past its cached prefix
  uint64_t load_epoch = 0;     // which heartbeat's pending charges hold this one
  // PickPrefill: prompt tokens the registry believes the node has cached, and why it was
  // chosen: "round_robin", "least_load", "prefix_match" (the longest cached prefix),
  // "load_balance" (a node with a shorter cached prefix but less load) or "no_prefix_match"
  // (no node has any of the prompt: least load).
  int64_t cached_tokens = 0;
  std::string reason;
};

// A node that left the registry: silent for too long, or replaced by a new registration.
struct LostNode {
  NodeId id;
  NodeRole role = NodeRole::kDecode;
  std::string address;
  uint64_t incarnation = 0;
  std::string reason;  // e.g. "no heartbeat for 5.2s (timeout 5s)"
};

struct RegisterResult {
  uint64_t incarnation = 0;
  std::optional<LostNode> replaced;  // the previous entry of the same id, if there was one
};

// One node's state, for logs, tests and status pages.
struct NodeSnapshot {
  NodeSpec spec;
  uint64_t incarnation = 0;
  bool live = false;
  bool draining = false;
  NodeLoadReport reported;
  int64_t pending_blocks = 0;
  int64_t pending_tokens = 0;
  int32_t pending_sequences = 0;
  absl::Time last_seen;
  int64_t num_cached_blocks = 0;  // prefix-cache blocks the registry believes it holds
};

struct PickOptions {
  // Nodes not to pick (e.g. the one a failed attempt used).
  std::vector<NodeId> exclude;
  // PickDecode: consider only colocated nodes (no prefill node is available).
  bool colocated_only = false;
  // PickPrefill: the prompt's full-block hashes for the nodes' block size (kv::HashBlocks with
  // the model id and the request's cache salt); empty = no prefix information.
  std::vector<uint64_t> prefix_hashes;
  int32_t prefix_block_size = 0;
};

// A node's prefix-cache changes (duet.v1.KvCacheEvents).
struct KvEventsReport {
  bool snapshot = false;  // `stored` is everything it holds now
  std::vector<uint64_t> stored;
  std::vector<uint64_t> removed;
};

class NodeRegistry {
 public:
  struct Options {
    // A node silent for longer than this is dead. > 0.
    absl::Duration heartbeat_timeout = absl::Seconds(5);
    // The retry-after hint attached to RESOURCE_EXHAUSTED and UNAVAILABLE from Pick*: about
    // when the next heartbeats will have corrected the accounting.
    absl::Duration retry_after = absl::Seconds(1);
    RoutingPolicy routing_policy = RoutingPolicy::kCacheAware;
    double cache_overlap_weight = 1.0;  // kCacheAware; > 0
  };

  // REQUIRES: clock outlives the registry.
  NodeRegistry(Options options, const Clock* clock);

  // Adds (or replaces) a node. INVALID_ARGUMENT naming the field for an empty id or address, or
  // a decode/colocated node without positive total_kv_blocks and block_size.
  absl::StatusOr<RegisterResult> Register(const NodeSpec& spec);

  // Records a load report. Returns false when the node is unknown (never registered, or removed
  // as dead): it must register again. A node that is silent but not yet swept comes back to
  // life.
  bool Heartbeat(const NodeId& id, const NodeLoadReport& load, bool draining,
                 const KvEventsReport& kv_events = {});

  // Removes every node silent for longer than the timeout and returns them.
  std::vector<LostNode> ExpireSilentNodes();

  // The decode (or colocated) node for a request whose prompt has `num_prompt_tokens` tokens,
  // and charges ceil(num_prompt_tokens / block_size) blocks and one sequence to it. Among live,
  // non-draining, non-excluded decode and colocated nodes whose free blocks (reported minus
  // pending) cover the prompt: the most free blocks, then the fewest running (+ pending)
  // sequences, then the smallest id. Errors:
  //   UNAVAILABLE (retry hint): no node registered at all; or no live, non-draining decode node.
  //   RESOURCE_EXHAUSTED (retry hint): candidates exist but none has the free blocks now.
  //   INVALID_ARGUMENT: the prompt needs more blocks than any candidate's whole pool.
  // REQUIRES: num_prompt_tokens >= 1.
  absl::StatusOr<NodeAssignment> PickDecode(int64_t num_prompt_tokens,
                                            const PickOptions& options = {});

  // The prefill node for a prompt of num_tokens tokens, by Options::routing_policy (ties: the
  // smallest id); charges it the tokens past its cached prefix, and adds the prompt's blocks to
  // its cache set. UNAVAILABLE (retry hint) when no live, non-draining, non-excluded prefill
  // node exists.
  absl::StatusOr<NodeAssignment> PickPrefill(int64_t num_tokens, const PickOptions& options = {});

  // Takes back the charge of an assignment whose work never reached the node (e.g. Reserve
  // failed) or is no longer queued there (a prefill that returned). No effect when the node
  // re-registered or sent a heartbeat since (the charge is gone already).
  void CancelAssignment(const NodeAssignment& assignment);

  // True when the node with this incarnation is registered and not silent.
  bool IsLive(const NodeId& id, uint64_t incarnation) const;
  // True when some live, non-draining prefill node not in `exclude` exists.
  bool HasLivePrefill(const std::vector<NodeId>& exclude = {}) const;
  // Registered nodes (live or silent but not yet swept), by id.
  std::vector<NodeSnapshot> Snapshot() const;
  size_t size() const;

 private:
  struct Entry {
    NodeSpec spec;
    uint64_t incarnation = 0;
    bool draining = false;
    NodeLoadReport reported;
    int64_t pending_blocks = 0;
    int64_t pending_tokens = 0;
    int32_t pending_sequences = 0;
    uint64_t load_epoch = 0;  // bumped by every heartbeat (clears pending)
    absl::Time last_seen;
    absl::flat_hash_set<uint64_t> cached_blocks;  // prefix-cache block hashes (approximate)
  };

  bool IsLiveLocked(const Entry& entry) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  LostNode ToLost(const Entry& entry, std::string reason) const;
  absl::Status Unavailable(std::string message) const;

  const Options options_;
  const Clock* const clock_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<NodeId, Entry> nodes_ ABSL_GUARDED_BY(mu_);
  uint64_t next_incarnation_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t round_robin_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace duet::router

#endif  // DUET_ROUTER_NODE_REGISTRY_H_
