#include "node/prefix_cache_counters.h"

namespace duet::node {

void AddPrefixCacheCounters(const sched::Scheduler& scheduler, const kv::BlockPool& pool,
                            google::protobuf::Map<std::string, int64_t>* counters) {
  (*counters)["prefix_cache_queried_tokens"] = scheduler.prefix_cache_stats().queried_tokens;
  (*counters)["prefix_cache_hit_tokens"] = scheduler.prefix_cache_stats().hit_tokens;
  (*counters)["prefix_cache_blocks"] = pool.num_cached();
  (*counters)["prefix_cache_evictions"] = pool.num_evictions();
}

}  // namespace duet::node
