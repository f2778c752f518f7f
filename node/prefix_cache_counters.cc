#include "node/prefix_cache_counters.h"

namespace duet::node {

void AddPrefixCacheCounters(const sched::PrefixCacheStats& stats, const kv::BlockPool& pool,
                            google::protobuf::Map<std::string, int64_t>* counters) {
  (*counters)["prefix_cache_queried_tokens"] = stats.queried_tokens;
  (*counters)["prefix_cache_hit_tokens"] = stats.hit_tokens;
  (*counters)["prefix_cache_blocks"] = pool.num_cached();
  (*counters)["prefix_cache_evictions"] = pool.num_evictions();
}

v1::KvCacheEvents TakeKvEvents(kv::BlockPool& pool, bool snapshot) {
  kv::BlockPool::Events events = pool.TakeEvents();
  v1::KvCacheEvents out;
  if (snapshot || events.overflowed) {
    out.set_snapshot(true);
    const std::vector<kv::BlockHash> all = pool.CachedHashes();
    out.mutable_stored()->Assign(all.begin(), all.end());
    return out;
  }
  out.mutable_stored()->Assign(events.stored.begin(), events.stored.end());
  out.mutable_removed()->Assign(events.removed.begin(), events.removed.end());
  return out;
}

}  // namespace duet::node
