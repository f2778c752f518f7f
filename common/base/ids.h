// Strong id types, so a request id, a block id and a node id cannot be swapped for one another
// or for an index. Each is a thin wrapper with explicit construction, ordering, hashing
// (absl and std) and printing (ToString, operator<<).
#ifndef DUET_COMMON_BASE_IDS_H_
#define DUET_COMMON_BASE_IDS_H_

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace duet {

template <typename Tag, typename Rep>
class StrongId {
 public:
  using rep_type = Rep;
  StrongId() = default;
  explicit StrongId(Rep value) : value_(std::move(value)) {}
  const Rep& value() const { return value_; }

  friend bool operator==(const StrongId&, const StrongId&) = default;
  friend auto operator<=>(const StrongId&, const StrongId&) = default;

  template <typename H>
  friend H AbslHashValue(H h, const StrongId& id) {
    return H::combine(std::move(h), id.value_);
  }
  // Debian's abseil predates AbslStringify: print with ToString() or operator<<.
  std::string ToString() const { return absl::StrCat(value_); }
  friend std::ostream& operator<<(std::ostream& os, const StrongId& id) { return os << id.value_; }

 private:
  Rep value_{};
};

// A request, as named by the router (unique across the cluster, printable, e.g. "r-0001f3").
using RequestId = StrongId<struct RequestIdTag, std::string>;
// A node, as registered with the router (e.g. "prefill-0").
using NodeId = StrongId<struct NodeIdTag, std::string>;
// A block of a node's paged KV pool: an index in [0, num_blocks).
using BlockId = StrongId<struct BlockIdTag, int32_t>;

}  // namespace duet

template <typename Tag, typename Rep>
struct std::hash<duet::StrongId<Tag, Rep>> {
  size_t operator()(const duet::StrongId<Tag, Rep>& id) const { return std::hash<Rep>()(id.value()); }
};

#endif  // DUET_COMMON_BASE_IDS_H_
