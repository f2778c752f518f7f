// Latency summaries shared by `duet bench --cluster` and `duet loadgen`: mean and percentiles
// of a sample, and their JSON.
#ifndef DUET_TOOLS_DUET_LATENCY_STATS_H_
#define DUET_TOOLS_DUET_LATENCY_STATS_H_

#include <string>
#include <vector>

namespace duet::cli {

struct Stats {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
};

// Nearest-rank percentiles; all zero for an empty sample.
Stats Summarize(std::vector<double> values);

// {"mean": .., "p50": .., "p90": .., "p99": ..}
std::string StatsJson(const Stats& stats);

}  // namespace duet::cli

#endif  // DUET_TOOLS_DUET_LATENCY_STATS_H_
