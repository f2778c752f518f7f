#include "router/node_registry.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/kv/block_hash.h"
#include "common/rpc/status_convert.h"

namespace duet::router {
namespace {

bool Contains(const std::vector<NodeId>& ids, const NodeId& id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

bool CanDecode(NodeRole role) { return role == NodeRole::kDecode || role == NodeRole::kColocated; }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

const char* RoutingPolicyName(RoutingPolicy policy) {
  switch (policy) {
    case RoutingPolicy::kRoundRobin:
      return "round_robin";
    case RoutingPolicy::kLeastLoad:
      return "least_load";
    case RoutingPolicy::kCacheAware:
      return "cache_aware";
  }
  return "unknown";
}

const char* NodeRoleName(NodeRole role) {
  switch (role) {
    case NodeRole::kPrefill:
      return "prefill";
    case NodeRole::kDecode:
      return "decode";
    case NodeRole::kColocated:
      return "colocated";
  }
  return "unknown";
}

NodeRegistry::NodeRegistry(Options options, const Clock* clock)
    : options_(options), clock_(clock) {}

absl::StatusOr<RegisterResult> NodeRegistry::Register(const NodeSpec& spec) {
  if (spec.id.value().empty()) return absl::InvalidArgumentError("node_id must be non-empty");
  const std::string who = absl::StrCat("node '", spec.id.value(), "'");
  if (spec.address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": address must be non-empty"));
  }
  if (CanDecode(spec.role)) {
    if (spec.total_kv_blocks <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": a ", NodeRoleName(spec.role),
                                                     " node needs total_kv_blocks > 0, got ",
                                                     spec.total_kv_blocks));
    }
    if (spec.block_size <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": a ", NodeRoleName(spec.role),
                                                     " node needs block_size > 0, got ",
                                                     spec.block_size));
    }
  } else if (spec.total_kv_blocks < 0 || spec.block_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": total_kv_blocks and block_size must be >= 0, got ",
                     spec.total_kv_blocks, " and ", spec.block_size));
  }

  absl::MutexLock lock(&mu_);
  RegisterResult result;
  auto it = nodes_.find(spec.id);
  if (it != nodes_.end()) {
    result.replaced = ToLost(it->second, "the node registered again (restarted)");
    nodes_.erase(it);
  }
  Entry entry;
  entry.spec = spec;
  entry.incarnation = next_incarnation_++;
  entry.reported.free_kv_blocks = spec.total_kv_blocks;
  entry.reported.total_kv_blocks = spec.total_kv_blocks;
  entry.last_seen = clock_->Now();
  result.incarnation = entry.incarnation;
  nodes_.emplace(spec.id, std::move(entry));
  return result;
}

bool NodeRegistry::Heartbeat(const NodeId& id, const NodeLoadReport& load, bool draining,
                             const KvEventsReport& kv_events) {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return false;
  Entry& entry = it->second;
  entry.last_seen = clock_->Now();
  entry.draining = draining;
  const int64_t total =
      load.total_kv_blocks > 0 ? load.total_kv_blocks : entry.reported.total_kv_blocks;
  entry.reported = load;
  entry.reported.total_kv_blocks = total;
  entry.spec.total_kv_blocks = total;
  entry.pending_blocks = 0;
  entry.pending_tokens = 0;
  entry.pending_sequences = 0;
  ++entry.load_epoch;
  if (kv_events.snapshot) entry.cached_blocks.clear();
  entry.cached_blocks.insert(kv_events.stored.begin(), kv_events.stored.end());
  for (const uint64_t hash : kv_events.removed) entry.cached_blocks.erase(hash);
  return true;
}

std::vector<LostNode> NodeRegistry::ExpireSilentNodes() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  std::vector<LostNode> lost;
  for (auto it = nodes_.begin(); it != nodes_.end();) {
    if (IsLiveLocked(it->second)) {
      ++it;
      continue;
    }
    lost.push_back(
        ToLost(it->second,
               absl::StrCat("no heartbeat for ", absl::FormatDuration(now - it->second.last_seen),
                            " (timeout ", absl::FormatDuration(options_.heartbeat_timeout), ")")));
    nodes_.erase(it++);
  }
  std::sort(lost.begin(), lost.end(),
            [](const LostNode& a, const LostNode& b) { return a.id < b.id; });
  return lost;
}

absl::StatusOr<NodeAssignment> NodeRegistry::PickDecode(int64_t num_prompt_tokens,
                                                        const PickOptions& options) {
  absl::MutexLock lock(&mu_);
  if (nodes_.empty()) return Unavailable("no nodes are registered with the router");
  Entry* best = nullptr;
  int64_t best_free = 0;
  int64_t best_need = 0;
  int num_candidates = 0;
  int64_t largest_pool = 0;
  int64_t largest_need = 0;  // blocks the prompt needs on the node with the largest pool
  for (auto& [id, entry] : nodes_) {
    if (!CanDecode(entry.spec.role) || !IsLiveLocked(entry) || entry.draining) continue;
    if (options.colocated_only && entry.spec.role != NodeRole::kColocated) continue;
    if (Contains(options.exclude, id)) continue;
    ++num_candidates;
    const int64_t need = CeilDiv(num_prompt_tokens, entry.spec.block_size);
    if (entry.spec.total_kv_blocks > largest_pool) {
      largest_pool = entry.spec.total_kv_blocks;
      largest_need = need;
    }
    const int64_t free = entry.reported.free_kv_blocks - entry.pending_blocks;
    if (free < need) continue;
    if (best != nullptr) {
      const int32_t running = entry.reported.running_sequences + entry.pending_sequences;
      const int32_t best_running = best->reported.running_sequences + best->pending_sequences;
      // Larger free first, then fewer running, then smaller id.
      if (std::make_tuple(-free, running, entry.spec.id) >=
          std::make_tuple(-best_free, best_running, best->spec.id)) {
        continue;
      }
    }
    best = &entry;
    best_free = free;
    best_need = need;
  }
  if (best == nullptr) {
    if (num_candidates == 0) {
      if (options.colocated_only) {
        return Unavailable("no live prefill node and no live colocated node can take the request");
      }
      return Unavailable(options.exclude.empty()
                             ? "no live decode node (every decode node is draining or silent)"
                             : "no other live decode node to retry on");
    }
    if (largest_need > largest_pool) {
      return absl::InvalidArgumentError(
          absl::StrCat("the prompt of ", num_prompt_tokens, " tokens needs ", largest_need,
                       " KV blocks but the largest decode node's pool holds only ", largest_pool));
    }
    return rpc::WithRetryAfter(
        absl::ResourceExhaustedError(
            absl::StrCat("no decode node has ", num_prompt_tokens, " tokens of free KV cache now (",
                         num_candidates, " decode node", num_candidates == 1 ? "" : "s", " full)")),
        options_.retry_after);
  }
  best->pending_blocks += best_need;
  best->pending_sequences += 1;
  NodeAssignment assignment;
  assignment.id = best->spec.id;
  assignment.role = best->spec.role;
  assignment.address = best->spec.address;
  assignment.incarnation = best->incarnation;
  assignment.block_size = best->spec.block_size;
  assignment.charged_blocks = best_need;
  assignment.load_epoch = best->load_epoch;
  return assignment;
}

absl::StatusOr<NodeAssignment> NodeRegistry::PickPrefill(int64_t num_tokens,
                                                         const PickOptions& options) {
  absl::MutexLock lock(&mu_);
  if (nodes_.empty()) return Unavailable("no nodes are registered with the router");
  struct Candidate {
    Entry* entry;
    int64_t queued;
    int64_t cached_tokens;
  };
  const int64_t reusable =
      options.prefix_block_size > 0
          ? std::min(static_cast<int64_t>(options.prefix_hashes.size()),
                     kv::MaxReusedBlocks(num_tokens, options.prefix_block_size))
          : 0;
  std::vector<Candidate> candidates;
  for (auto& [id, entry] : nodes_) {
    if (entry.spec.role != NodeRole::kPrefill || !IsLiveLocked(entry) || entry.draining) continue;
    if (Contains(options.exclude, id)) continue;
    // As the node will reuse them: leading blocks, never the last token's.
    int64_t cached_blocks = 0;
    while (cached_blocks < reusable &&
           entry.cached_blocks.contains(options.prefix_hashes[static_cast<size_t>(cached_blocks)])) {
      ++cached_blocks;
    }
    candidates.push_back({&entry, entry.reported.queued_prefill_tokens + entry.pending_tokens,
                          cached_blocks * options.prefix_block_size});
  }
  if (candidates.empty()) {
    return Unavailable(options.exclude.empty()
                           ? "no live prefill node (every prefill node is draining or silent)"
                           : "no other live prefill node to retry on");
  }
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    return a.entry->spec.id < b.entry->spec.id;
  });
  auto least = [](auto key, const std::vector<Candidate>& cs) {
    const Candidate* best = &cs.front();
    for (const Candidate& c : cs) {
      if (key(c) < key(*best)) best = &c;  // ties: the smallest id (sorted)
    }
    return best;
  };
  const Candidate* chosen = &candidates.front();
  std::string reason;
  int64_t longest = 0;
  for (const Candidate& c : candidates) longest = std::max(longest, c.cached_tokens);
  switch (options_.routing_policy) {
    case RoutingPolicy::kRoundRobin:
      chosen = &candidates[round_robin_++ % candidates.size()];
      reason = "round_robin";
      break;
    case RoutingPolicy::kLeastLoad:
      chosen = least([](const Candidate& c) { return c.queued; }, candidates);
      reason = "least_load";
      break;
    case RoutingPolicy::kCacheAware: {
      const double weight = options_.cache_overlap_weight;
      chosen = least(
          [weight, num_tokens](const Candidate& c) {
            return weight * static_cast<double>(num_tokens - c.cached_tokens) +
                   static_cast<double>(c.queued);
          },
          candidates);
      reason = longest == 0                        ? "no_prefix_match"
               : chosen->cached_tokens == longest ? "prefix_match"
                                                  : "load_balance";
      break;
    }
  }
  Entry* best = chosen->entry;
  best->pending_tokens += num_tokens - chosen->cached_tokens;
  // The node will hold the prompt's blocks once it has prefilled them.
  best->cached_blocks.insert(options.prefix_hashes.begin(), options.prefix_hashes.end());
  NodeAssignment assignment;
  assignment.cached_tokens = chosen->cached_tokens;
  assignment.reason = std::move(reason);
  assignment.id = best->spec.id;
  assignment.role = best->spec.role;
  assignment.address = best->spec.address;
  assignment.incarnation = best->incarnation;
  assignment.block_size = best->spec.block_size;
  assignment.charged_tokens = num_tokens - chosen->cached_tokens;
  assignment.load_epoch = best->load_epoch;
  return assignment;
}

void NodeRegistry::CancelAssignment(const NodeAssignment& assignment) {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(assignment.id);
  if (it == nodes_.end()) return;
  Entry& entry = it->second;
  if (entry.incarnation != assignment.incarnation || entry.load_epoch != assignment.load_epoch) {
    return;
  }
  entry.pending_blocks = std::max<int64_t>(0, entry.pending_blocks - assignment.charged_blocks);
  entry.pending_tokens = std::max<int64_t>(0, entry.pending_tokens - assignment.charged_tokens);
  if (CanDecode(assignment.role)) {
    entry.pending_sequences = std::max(0, entry.pending_sequences - 1);
  }
}

bool NodeRegistry::IsLive(const NodeId& id, uint64_t incarnation) const {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(id);
  return it != nodes_.end() && it->second.incarnation == incarnation && IsLiveLocked(it->second);
}

bool NodeRegistry::HasLivePrefill(const std::vector<NodeId>& exclude) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, entry] : nodes_) {
    if (entry.spec.role == NodeRole::kPrefill && !entry.draining && IsLiveLocked(entry) &&
        !Contains(exclude, id)) {
      return true;
    }
  }
  return false;
}

std::vector<NodeSnapshot> NodeRegistry::Snapshot() const {
  absl::MutexLock lock(&mu_);
  std::vector<NodeSnapshot> out;
  out.reserve(nodes_.size());
  for (const auto& [id, entry] : nodes_) {
    NodeSnapshot s;
    s.spec = entry.spec;
    s.incarnation = entry.incarnation;
    s.live = IsLiveLocked(entry);
    s.draining = entry.draining;
    s.reported = entry.reported;
    s.pending_blocks = entry.pending_blocks;
    s.pending_tokens = entry.pending_tokens;
    s.pending_sequences = entry.pending_sequences;
    s.last_seen = entry.last_seen;
    s.num_cached_blocks = static_cast<int64_t>(entry.cached_blocks.size());
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(),
            [](const NodeSnapshot& a, const NodeSnapshot& b) { return a.spec.id < b.spec.id; });
  return out;
}

size_t NodeRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return nodes_.size();
}

bool NodeRegistry::IsLiveLocked(const Entry& entry) const {
  return clock_->Now() - entry.last_seen <= options_.heartbeat_timeout;
}

LostNode NodeRegistry::ToLost(const Entry& entry, std::string reason) const {
  LostNode lost;
  lost.id = entry.spec.id;
  lost.role = entry.spec.role;
  lost.address = entry.spec.address;
  lost.incarnation = entry.incarnation;
  lost.reason = std::move(reason);
  return lost;
}

absl::Status NodeRegistry::Unavailable(std::string message) const {
  return rpc::WithRetryAfter(absl::UnavailableError(std::move(message)), options_.retry_after);
}

}  // namespace duet::router
