// NodeRegistry with a FakeClock: registration, heartbeats, death by timeout, draining, selection
// order, pending accounting and the errors when nothing fits.
#include "router/node_registry.h"

#include <memory>
#include <string>

#include "common/kv/block_hash.h"
#include "common/rpc/status_convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet::router {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kTimeout = absl::Seconds(5);
constexpr absl::Duration kRetryAfter = absl::Seconds(1);

NodeSpec Decode(const std::string& id, int64_t blocks = 100, int32_t block_size = 16) {
  NodeSpec spec;
  spec.id = NodeId(id);
  spec.role = NodeRole::kDecode;
  spec.address = "127.0.0.1:" + std::to_string(1000 + id.size());
  spec.model_id = "tiny";
  spec.total_kv_blocks = blocks;
  spec.block_size = block_size;
  return spec;
}

NodeSpec Prefill(const std::string& id) {
  NodeSpec spec = Decode(id, 0, 16);
  spec.role = NodeRole::kPrefill;
  return spec;
}

NodeLoadReport Load(int64_t free_blocks, int32_t running = 0, int64_t queued_tokens = 0) {
  NodeLoadReport load;
  load.free_kv_blocks = free_blocks;
  load.running_sequences = running;
  load.queued_prefill_tokens = queued_tokens;
  return load;
}

class NodeRegistryTest : public ::testing::Test {
 protected:
  NodeRegistryTest()
      : registry_({.heartbeat_timeout = kTimeout, .retry_after = kRetryAfter}, &clock_) {}

  uint64_t Add(const NodeSpec& spec) {
    absl::StatusOr<RegisterResult> result = registry_.Register(spec);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result->incarnation : 0;
  }

  std::string PickDecodeId(int64_t tokens, const PickOptions& options = {}) {
    absl::StatusOr<NodeAssignment> a = registry_.PickDecode(tokens, options);
    return a.ok() ? a->id.value() : a.status().ToString();
  }

  FakeClock clock_;
  NodeRegistry registry_;
};

TEST_F(NodeRegistryTest, RegisterValidatesTheSpec) {
  NodeSpec no_id = Decode("");
  EXPECT_THAT(registry_.Register(no_id).status().message(), HasSubstr("node_id"));
  NodeSpec no_address = Decode("d");
  no_address.address = "";
  EXPECT_THAT(registry_.Register(no_address).status().message(), HasSubstr("address"));
  EXPECT_THAT(registry_.Register(Decode("d", 0)).status().message(),
              HasSubstr("total_kv_blocks > 0, got 0"));
  EXPECT_THAT(registry_.Register(Decode("d", 10, 0)).status().message(),
              HasSubstr("block_size > 0, got 0"));
  EXPECT_EQ(registry_.Register(Decode("d", 10, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_.size(), 0u);
  // A prefill node needs no KV pool.
  EXPECT_TRUE(registry_.Register(Prefill("p")).ok());
}

TEST_F(NodeRegistryTest, RegisteredNodeIsPickedWithItsAddressAndCharge) {
  const uint64_t incarnation = Add(Decode("d0", 100, 16));
  absl::StatusOr<NodeAssignment> a = registry_.PickDecode(33);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->id, NodeId("d0"));
  EXPECT_EQ(a->address, Decode("d0").address);
  EXPECT_EQ(a->incarnation, incarnation);
  EXPECT_EQ(a->block_size, 16);
  EXPECT_EQ(a->charged_blocks, 3);  // ceil(33 / 16)
  const std::vector<NodeSnapshot> snap = registry_.Snapshot();
  ASSERT_EQ(snap.size(), 1u);
  EXPECT_EQ(snap[0].pending_blocks, 3);
  EXPECT_EQ(snap[0].pending_sequences, 1);
  EXPECT_TRUE(snap[0].live);
}

TEST_F(NodeRegistryTest, HeartbeatOfUnknownNodeIsRefused) {
  EXPECT_FALSE(registry_.Heartbeat(NodeId("ghost"), Load(10), false));
  Add(Decode("d0"));
  EXPECT_TRUE(registry_.Heartbeat(NodeId("d0"), Load(10), false));
}

TEST_F(NodeRegistryTest, SilentNodeDiesAfterTheTimeoutAndCanRegisterAgain) {
  const uint64_t first = Add(Decode("d0"));
  clock_.Advance(kTimeout);  // exactly the timeout: still alive
  EXPECT_TRUE(registry_.IsLive(NodeId("d0"), first));
  EXPECT_TRUE(registry_.ExpireSilentNodes().empty());
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_FALSE(registry_.IsLive(NodeId("d0"), first));
  // Not picked even before the sweep.
  EXPECT_EQ(registry_.PickDecode(16).status().code(), absl::StatusCode::kUnavailable);

  const std::vector<LostNode> lost = registry_.ExpireSilentNodes();
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0].id, NodeId("d0"));
  EXPECT_EQ(lost[0].incarnation, first);
  EXPECT_THAT(lost[0].reason, HasSubstr("no heartbeat for 5.001s (timeout 5s)"));
  EXPECT_TRUE(registry_.ExpireSilentNodes().empty());  // reported once
  EXPECT_EQ(registry_.size(), 0u);
  EXPECT_FALSE(registry_.Heartbeat(NodeId("d0"), Load(10), false));  // must register again

  const uint64_t second = Add(Decode("d0"));
  EXPECT_NE(second, first);
  EXPECT_TRUE(registry_.IsLive(NodeId("d0"), second));
  EXPECT_EQ(PickDecodeId(16), "d0");
}

TEST_F(NodeRegistryTest, HeartbeatsKeepANodeAlive) {
  const uint64_t incarnation = Add(Decode("d0"));
  for (int i = 0; i < 10; ++i) {
    clock_.Advance(absl::Seconds(4));
    EXPECT_TRUE(registry_.Heartbeat(NodeId("d0"), Load(100), false));
  }
  EXPECT_TRUE(registry_.ExpireSilentNodes().empty());
  EXPECT_TRUE(registry_.IsLive(NodeId("d0"), incarnation));
}

TEST_F(NodeRegistryTest, RegisteringAgainReplacesTheOldEntry) {
  const uint64_t first = Add(Decode("d0"));
  absl::StatusOr<RegisterResult> again = registry_.Register(Decode("d0", 50));
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(again->replaced.has_value());
  EXPECT_EQ(again->replaced->incarnation, first);
  EXPECT_THAT(again->replaced->reason, HasSubstr("registered again"));
  EXPECT_FALSE(registry_.IsLive(NodeId("d0"), first));
  EXPECT_TRUE(registry_.IsLive(NodeId("d0"), again->incarnation));
  EXPECT_EQ(registry_.size(), 1u);
}

TEST_F(NodeRegistryTest, DrainingNodesGetNoNewWork) {
  Add(Decode("a", 100));
  Add(Decode("b", 10));
  ASSERT_TRUE(registry_.Heartbeat(NodeId("a"), Load(100), /*draining=*/true));
  EXPECT_EQ(PickDecodeId(16), "b");
  ASSERT_TRUE(registry_.Heartbeat(NodeId("b"), Load(10), /*draining=*/true));
  absl::Status status = registry_.PickDecode(16).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("no live decode node"));
  EXPECT_EQ(rpc::GetRetryAfter(status), kRetryAfter);
  // Back from draining.
  ASSERT_TRUE(registry_.Heartbeat(NodeId("a"), Load(100), false));
  EXPECT_EQ(PickDecodeId(16), "a");

  Add(Prefill("p"));
  ASSERT_TRUE(registry_.Heartbeat(NodeId("p"), Load(0), true));
  EXPECT_EQ(registry_.PickPrefill(10).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(registry_.HasLivePrefill());
}

TEST_F(NodeRegistryTest, DecodeSelectionPrefersFreeBlocksThenFewerSequencesThenId) {
  Add(Decode("c"));
  Add(Decode("b"));
  Add(Decode("a"));
  ASSERT_TRUE(registry_.Heartbeat(NodeId("a"), Load(50, 3), false));
  ASSERT_TRUE(registry_.Heartbeat(NodeId("b"), Load(80, 9), false));
  ASSERT_TRUE(registry_.Heartbeat(NodeId("c"), Load(80, 2), false));
  EXPECT_EQ(PickDecodeId(1), "c");  // 80 free, 2 running
  // c: 79 free, 3 sequences; b: 80 free.
  EXPECT_EQ(PickDecodeId(1), "b");
  // b and c: 79 free; c has 3 sequences, b 10.
  EXPECT_EQ(PickDecodeId(1), "c");

  // Equal everything: the smaller id.
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(registry_.Heartbeat(NodeId(id), Load(10, 1), false));
  }
  EXPECT_EQ(PickDecodeId(1), "a");
}

TEST_F(NodeRegistryTest, PendingChargesSpreadABurstAndHeartbeatsCorrectThem) {
  Add(Decode("a", 100));
  Add(Decode("b", 100));
  ASSERT_TRUE(registry_.Heartbeat(NodeId("a"), Load(10), false));
  ASSERT_TRUE(registry_.Heartbeat(NodeId("b"), Load(8), false));
  // 64 tokens = 4 blocks each.
  EXPECT_EQ(PickDecodeId(64), "a");  // a 10 -> 6
  EXPECT_EQ(PickDecodeId(64), "b");  // b 8 -> 4
  EXPECT_EQ(PickDecodeId(64), "a");  // a 6 -> 2
  EXPECT_EQ(PickDecodeId(64), "b");  // b 4 -> 0
  absl::Status full = registry_.PickDecode(64).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("no decode node has 64 tokens of free KV cache"));
  EXPECT_EQ(rpc::GetRetryAfter(full), kRetryAfter);
  // The nodes report what they really have now; the charges are replaced.
  ASSERT_TRUE(registry_.Heartbeat(NodeId("b"), Load(5), false));
  EXPECT_EQ(PickDecodeId(64), "b");
  EXPECT_EQ(registry_.PickDecode(64).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(NodeRegistryTest, CancelledAssignmentGivesItsChargeBackUntilTheNextHeartbeat) {
  Add(Decode("a", 4));
  absl::StatusOr<NodeAssignment> first = registry_.PickDecode(64);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(registry_.PickDecode(1).status().code(), absl::StatusCode::kResourceExhausted);
  registry_.CancelAssignment(*first);
  absl::StatusOr<NodeAssignment> second = registry_.PickDecode(64);
  ASSERT_TRUE(second.ok());
  // After a heartbeat the charge is part of the report; cancelling must not subtract it again.
  ASSERT_TRUE(registry_.Heartbeat(NodeId("a"), Load(0), false));
  registry_.CancelAssignment(*second);
  EXPECT_EQ(registry_.Snapshot()[0].pending_blocks, 0);
  EXPECT_EQ(registry_.PickDecode(1).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(NodeRegistryTest, ErrorsWhenNothingFits) {
  absl::Status empty = registry_.PickDecode(1).status();
  EXPECT_EQ(empty.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(empty.message(), HasSubstr("no nodes are registered"));
  EXPECT_EQ(rpc::GetRetryAfter(empty), kRetryAfter);
  EXPECT_EQ(registry_.PickPrefill(1).status().code(), absl::StatusCode::kUnavailable);

  Add(Prefill("p"));
  absl::Status no_decode = registry_.PickDecode(1).status();
  EXPECT_EQ(no_decode.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(no_decode.message(), HasSubstr("no live decode node"));

  Add(Decode("small", 4, 16));
  absl::Status never = registry_.PickDecode(65).status();
  EXPECT_EQ(never.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(never.message(),
              HasSubstr("needs 5 KV blocks but the largest decode node's pool holds only 4"));
  EXPECT_TRUE(registry_.PickDecode(64).ok());
}

TEST_F(NodeRegistryTest, ExcludedAndColocatedOnlyPicks) {
  Add(Decode("a", 100));
  NodeSpec colocated = Decode("z", 10);
  colocated.role = NodeRole::kColocated;
  Add(colocated);
  EXPECT_EQ(PickDecodeId(1), "a");
  EXPECT_EQ(PickDecodeId(1, {.exclude = {NodeId("a")}}), "z");
  EXPECT_EQ(PickDecodeId(1, {.colocated_only = true}), "z");
  absl::Status none = registry_.PickDecode(1, {.exclude = {NodeId("a"), NodeId("z")}}).status();
  EXPECT_EQ(none.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(none.message(), HasSubstr("no other live decode node"));
}

TEST_F(NodeRegistryTest, PrefillSelectionTakesTheShortestQueueIncludingPending) {
  Add(Prefill("p1"));
  Add(Prefill("p0"));
  ASSERT_TRUE(registry_.Heartbeat(NodeId("p0"), Load(0, 0, 100), false));
  ASSERT_TRUE(registry_.Heartbeat(NodeId("p1"), Load(0, 0, 40), false));
  absl::StatusOr<NodeAssignment> a = registry_.PickPrefill(50);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->id, NodeId("p1"));  // 40 queued
  EXPECT_EQ(a->charged_tokens, 50);
  EXPECT_EQ(registry_.PickPrefill(50)->id, NodeId("p1"));  // p1 90 < p0 100
  EXPECT_EQ(registry_.PickPrefill(50)->id, NodeId("p0"));  // p1 140 > p0 100
  // A heartbeat replaces reported + pending with the node's own count.
  ASSERT_TRUE(registry_.Heartbeat(NodeId("p0"), Load(0, 0, 500), false));
  EXPECT_EQ(registry_.PickPrefill(50)->id, NodeId("p1"));
}

TEST_F(NodeRegistryTest, PrefillTieBreaksOnIdAndHonoursExclusion) {
  Add(Prefill("p1"));
  Add(Prefill("p0"));
  EXPECT_EQ(registry_.PickPrefill(10)->id, NodeId("p0"));
  EXPECT_EQ(registry_.PickPrefill(10)->id, NodeId("p1"));  // p0 has 10 pending
  EXPECT_EQ(registry_.PickPrefill(10, {.exclude = {NodeId("p0")}})->id, NodeId("p1"));
  EXPECT_TRUE(registry_.HasLivePrefill({NodeId("p0")}));
  EXPECT_FALSE(registry_.HasLivePrefill({NodeId("p0"), NodeId("p1")}));
  absl::Status none = registry_.PickPrefill(10, {.exclude = {NodeId("p0"), NodeId("p1")}}).status();
  EXPECT_EQ(none.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(none.message(), HasSubstr("no other live prefill node"));
  EXPECT_EQ(rpc::GetRetryAfter(none), kRetryAfter);
}

// ---- KV-aware routing -------------------------------------------------------------------

// Hashes of a prompt of `blocks` full blocks of 16 tokens: `shared` blocks of a common prefix,
// then blocks of its own (`seed`).
std::vector<uint64_t> PromptHashes(int blocks, int shared, int seed) {
  std::vector<int32_t> tokens;
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < 16; ++t) tokens.push_back(b < shared ? 1000 + 16 * b + t : seed * 7919 + 16 * b + t);
  }
  return kv::HashBlocks("tiny", "", tokens, 16);
}

class KvRoutingTest : public ::testing::Test {
 protected:
  std::unique_ptr<NodeRegistry> Registry(RoutingPolicy policy, double weight = 1.0) {
    auto r = std::make_unique<NodeRegistry>(
        NodeRegistry::Options{.heartbeat_timeout = kTimeout,
                              .retry_after = kRetryAfter,
                              .routing_policy = policy,
                              .cache_overlap_weight = weight},
        &clock_);
    for (const char* id : {"p0", "p1", "p2"}) EXPECT_TRUE(r->Register(Prefill(id)).ok());
    return r;
  }
  // A heartbeat with `queued` prompt tokens and these cache events.
  static void Beat(NodeRegistry& r, const std::string& id, int64_t queued, KvEventsReport events) {
    ASSERT_TRUE(r.Heartbeat(NodeId(id), Load(0, 0, queued), false, events));
  }
  static PickOptions WithPrefix(std::vector<uint64_t> hashes) {
    PickOptions o;
    o.prefix_hashes = std::move(hashes);
    o.prefix_block_size = 16;
    return o;
  }
  FakeClock clock_;
};

TEST_F(KvRoutingTest, RoundRobinTakesNodesInTurnWhateverTheirLoadOrCache) {
  std::unique_ptr<NodeRegistry> r = Registry(RoutingPolicy::kRoundRobin);
  Beat(*r, "p0", 10000, {.stored = PromptHashes(4, 4, 1)});
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<NodeAssignment> a = r->PickPrefill(64, WithPrefix(PromptHashes(4, 4, 1)));
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a->reason, "round_robin");
    ids.push_back(a->id.value());
  }
  EXPECT_THAT(ids, ::testing::ElementsAre("p0", "p1", "p2", "p0", "p1", "p2"));
}

TEST_F(KvRoutingTest, LeastLoadIgnoresCaches) {
  std::unique_ptr<NodeRegistry> r = Registry(RoutingPolicy::kLeastLoad);
  Beat(*r, "p0", 50, {.stored = PromptHashes(4, 4, 1)});
  Beat(*r, "p1", 10, {});
  Beat(*r, "p2", 20, {});
  absl::StatusOr<NodeAssignment> a = r->PickPrefill(64, WithPrefix(PromptHashes(4, 4, 1)));
  EXPECT_EQ(a->id, NodeId("p1"));
  EXPECT_EQ(a->reason, "least_load");
}

TEST_F(KvRoutingTest, CacheAwarePrefersTheLongestCachedPrefixUntilLoadOutweighsIt) {
  std::unique_ptr<NodeRegistry> r = Registry(RoutingPolicy::kCacheAware);
  // p0 holds 3 blocks of the system prompt, p1 only the first; p2 nothing but is idle.
  const std::vector<uint64_t> system = PromptHashes(3, 3, 0);
  Beat(*r, "p0", 40, {.stored = system});
  Beat(*r, "p1", 0, {.stored = {system[0]}});
  Beat(*r, "p2", 0, {});
  // A 5-block prompt (80 tokens) with the system prompt: p0 computes 32 (+40 queued) = 72,
  // p1 64, p2 80.
  absl::StatusOr<NodeAssignment> a = r->PickPrefill(80, WithPrefix(PromptHashes(5, 3, 9)));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->id, NodeId("p1"));
  EXPECT_EQ(a->reason, "load_balance");
  EXPECT_EQ(a->cached_tokens, 16);
  EXPECT_EQ(a->charged_tokens, 64);
  // Lighter load on p0: its 48 cached tokens win.
  Beat(*r, "p0", 0, {});
  Beat(*r, "p1", 0, {});
  a = r->PickPrefill(80, WithPrefix(PromptHashes(5, 3, 10)));
  EXPECT_EQ(a->id, NodeId("p0"));
  EXPECT_EQ(a->reason, "prefix_match");
  EXPECT_EQ(a->cached_tokens, 48);
  EXPECT_EQ(a->charged_tokens, 32);
  // A prompt nobody has: least load (p1 and p2 idle; p0 now has 32 pending), smallest id.
  a = r->PickPrefill(80, WithPrefix(PromptHashes(5, 0, 11)));
  EXPECT_EQ(a->id, NodeId("p1"));
  EXPECT_EQ(a->reason, "no_prefix_match");
  // A heavier overlap weight makes cache count for more against load.
  std::unique_ptr<NodeRegistry> heavy = Registry(RoutingPolicy::kCacheAware, 4.0);
  Beat(*heavy, "p0", 100, {.stored = system});
  Beat(*heavy, "p1", 0, {});
  Beat(*heavy, "p2", 0, {});
  EXPECT_EQ(heavy->PickPrefill(80, WithPrefix(PromptHashes(5, 3, 12)))->id, NodeId("p0"));
}

TEST_F(KvRoutingTest, RoutedPromptsJoinTheNodesCacheSoABurstStaysTogether) {
  // Nothing is cached when a burst sharing a 6-block system prompt arrives. The first request
  // goes to p0 and its blocks count as p0's at once (before any heartbeat), so with cache
  // weighing 4x against queue the rest follow it there.
  std::unique_ptr<NodeRegistry> r = Registry(RoutingPolicy::kCacheAware, 4.0);
  std::vector<std::string> ids, reasons;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<NodeAssignment> a =
        r->PickPrefill(7 * 16, WithPrefix(PromptHashes(7, 6, 20 + i)));
    ids.push_back(a->id.value());
    reasons.push_back(a->reason);
  }
  EXPECT_THAT(ids, ::testing::ElementsAre("p0", "p0", "p0", "p0"));
  EXPECT_THAT(reasons, ::testing::ElementsAre("no_prefix_match", "prefix_match", "prefix_match",
                                              "prefix_match"));
  // With weight 1 the queue counts as much: the second request (p0: 16 to compute + 112
  // queued = 128 > 112 elsewhere) goes to an idle node, and then the prefix is on two nodes.
  std::unique_ptr<NodeRegistry> even = Registry(RoutingPolicy::kCacheAware, 1.0);
  ids.clear();
  for (int i = 0; i < 4; ++i) {
    ids.push_back(even->PickPrefill(7 * 16, WithPrefix(PromptHashes(7, 6, 40 + i)))->id.value());
  }
  EXPECT_THAT(ids, ::testing::ElementsAre("p0", "p1", "p2", "p0"));
}

// The router counts what the node will reuse: whole leading blocks, never the block of the
// prompt's last token (kv::MaxReusedBlocks), even when the node holds it.
TEST_F(KvRoutingTest, CachedEstimateStopsBeforeTheLastTokensBlock) {
  std::unique_ptr<NodeRegistry> r = Registry(RoutingPolicy::kCacheAware);
  const std::vector<uint64_t> h = PromptHashes(2, 2, 0);  // 32 tokens, 2 full blocks
  Beat(*r, "p0", 0, {.stored = h});
  absl::StatusOr<NodeAssignment> a = r->PickPrefill(32, WithPrefix(h));
  EXPECT_EQ(a->id, NodeId("p0"));
  EXPECT_EQ(a->cached_tokens, 16);
  EXPECT_EQ(a->charged_tokens, 16);
}

TEST_F(KvRoutingTest, EventsAddAndRemoveBlocksAndASnapshotReplacesThem) {
  std::unique_ptr<NodeRegistry> r = Registry(RoutingPolicy::kCacheAware);
  const std::vector<uint64_t> h = PromptHashes(4, 4, 0);
  Beat(*r, "p1", 0, {.stored = h});
  auto cached = [&](const std::string& id) {
    for (const NodeSnapshot& s : r->Snapshot()) {
      if (s.spec.id == NodeId(id)) return s.num_cached_blocks;
    }
    return int64_t{-1};
  };
  EXPECT_EQ(cached("p1"), 4);
  Beat(*r, "p1", 0, {.removed = {h[2], h[3]}});
  EXPECT_EQ(cached("p1"), 2);
  // p1 has only the first two blocks now: 32 of 64 tokens cached.
  EXPECT_EQ(r->PickPrefill(64, WithPrefix(h))->cached_tokens, 32);
  Beat(*r, "p1", 0, {.snapshot = true, .stored = {h[0]}});
  EXPECT_EQ(cached("p1"), 1);
  // Registering again (a restart) forgets everything.
  ASSERT_TRUE(r->Register(Prefill("p1")).ok());
  EXPECT_EQ(cached("p1"), 0);
}

}  // namespace
}  // namespace duet::router
