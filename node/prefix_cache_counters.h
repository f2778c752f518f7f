// The prefix cache's event counts for NodeAdmin.GetStatus (v1::NodeStatus.counters), from which
// node_runtime also makes the Prometheus series (duet:prefix_cache_*).
#ifndef DUET_NODE_PREFIX_CACHE_COUNTERS_H_
#define DUET_NODE_PREFIX_CACHE_COUNTERS_H_

#include <google/protobuf/map.h>

#include <cstdint>
#include <string>

#include "common/kv/block_pool.h"
#include "common/sched/scheduler.h"
#include "duet/v1/internal.pb.h"

namespace duet::node {

// prefix_cache_queried_tokens and prefix_cache_hit_tokens (prompt positions looked up at
// admission, and of them found cached), prefix_cache_blocks (blocks cached now, in use or
// evictable) and prefix_cache_evictions.
void AddPrefixCacheCounters(const sched::PrefixCacheStats& stats, const kv::BlockPool& pool,
                            google::protobuf::Map<std::string, int64_t>* counters);

// The pool's KV events since the last call (BlockPool::TakeEvents), or a snapshot of every
// cached block when `snapshot` is asked for or events were dropped.
v1::KvCacheEvents TakeKvEvents(kv::BlockPool& pool, bool snapshot);

}  // namespace duet::node

#endif  // DUET_NODE_PREFIX_CACHE_COUNTERS_H_
