#include "tools/duet/latency_stats.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/base/json.h"

namespace duet::cli {

Stats Summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  auto at = [&v](double q) {
    const size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
  };
  s.p50 = at(0.5);
  s.p90 = at(0.9);
  s.p99 = at(0.99);
  return s;
}

std::string StatsJson(const Stats& s) {
  return absl::StrCat("{\"mean\": ", JsonFloat(static_cast<float>(s.mean)),
                      ", \"p50\": ", JsonFloat(static_cast<float>(s.p50)),
                      ", \"p90\": ", JsonFloat(static_cast<float>(s.p90)),
                      ", \"p99\": ", JsonFloat(static_cast<float>(s.p99)), "}");
}

}  // namespace duet::cli
