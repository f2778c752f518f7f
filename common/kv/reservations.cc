#include "common/kv/reservations.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace duet::kv {
namespace {

// Debian's abseil has its own string_view: heterogeneous map lookups need that one.
absl::string_view Key(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

ReservationTable::ReservationTable(BlockPool* pool, Clock* clock, std::string id_prefix)
    : pool_(pool), clock_(clock), id_prefix_(std::move(id_prefix)) {
  if (pool_ == nullptr || clock_ == nullptr) std::abort();  // caller bug
}

ReservationTable::~ReservationTable() {
  std::vector<std::string> ids;
  ids.reserve(by_id_.size());
  for (const auto& [id, entry] : by_id_) ids.push_back(id);
  for (const std::string& id : ids) Drop(id);
}

absl::StatusOr<Reservation> ReservationTable::Reserve(const RequestId& request_id,
                                                      int64_t num_blocks, absl::Duration lease,
                                                      std::vector<int32_t> prefix_blocks) {
  if (request_id.value().empty()) {
    return absl::InvalidArgumentError("KV reservation: empty request id");
  }
  const int64_t fresh = num_blocks - static_cast<int64_t>(prefix_blocks.size());
  if (num_blocks < 1 || lease <= absl::ZeroDuration() || fresh < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV reservation for request ", request_id.value(), ": num_blocks (", num_blocks,
        ") and lease (", absl::FormatDuration(lease), ") must be positive, with at least one ",
        "block past the ", prefix_blocks.size(), " cached ones"));
  }
  SweepExpired();
  if (auto it = by_request_.find(request_id); it != by_request_.end()) {
    return absl::AlreadyExistsError(
        absl::StrCat("request ", request_id.value(), " already holds KV reservation ", it->second));
  }
  if (!pool_->CanAllocate(fresh)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV reservation for request ", request_id.value(), " needs ", fresh,
                     " blocks; the pool has ", pool_->num_free(), " free of ", pool_->num_blocks(),
                     " (", num_reserved_blocks_, " held by ", by_id_.size(), " reservations)"));
  }
  absl::StatusOr<std::vector<int32_t>> blocks = pool_->Allocate(fresh);
  if (!blocks.ok()) return blocks.status();
  blocks->insert(blocks->begin(), prefix_blocks.begin(), prefix_blocks.end());

  Entry entry;
  entry.serial = next_serial_++;
  entry.reservation.reservation_id = absl::StrCat(id_prefix_, entry.serial);
  entry.reservation.request_id = request_id;
  entry.reservation.blocks = *std::move(blocks);
  entry.reservation.lease = lease;
  entry.reservation.expires_at = clock_->Now() + lease;
  num_reserved_blocks_ += num_blocks;
  Reservation copy = entry.reservation;
  by_request_.emplace(request_id, copy.reservation_id);
  by_id_.emplace(copy.reservation_id, std::move(entry));
  return copy;
}

ReservationTable::Entry* ReservationTable::FindLive(std::string_view reservation_id) {
  auto it = by_id_.find(Key(reservation_id));
  if (it == by_id_.end() || !Live(it->second)) return nullptr;
  return &it->second;
}

absl::Status ReservationTable::Touch(std::string_view reservation_id) {
  Entry* e = FindLive(reservation_id);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat("no live KV reservation ", std::string(reservation_id),
                                            " (unknown, claimed, released or expired)"));
  }
  e->reservation.expires_at = clock_->Now() + e->reservation.lease;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ReservationTable::Claim(std::string_view reservation_id) {
  Entry* e = FindLive(reservation_id);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat("cannot claim KV reservation ",
                                            std::string(reservation_id),
                                            ": unknown, claimed, released or expired"));
  }
  std::vector<int32_t> blocks = std::move(e->reservation.blocks);
  num_reserved_blocks_ -= static_cast<int64_t>(blocks.size());
  by_request_.erase(e->reservation.request_id);
  by_id_.erase(by_id_.find(Key(reservation_id)));
  return blocks;
}

absl::Status ReservationTable::Release(std::string_view reservation_id) {
  auto it = by_id_.find(Key(reservation_id));
  if (it == by_id_.end()) {
    return absl::NotFoundError(absl::StrCat("cannot release KV reservation ",
                                            std::string(reservation_id),
                                            ": the table does not hold it"));
  }
  Drop(it->first);
  return absl::OkStatus();
}

void ReservationTable::Drop(const std::string& reservation_id) {
  auto it = by_id_.find(Key(reservation_id));
  if (it == by_id_.end()) std::abort();  // caller passes a held id
  const Reservation& r = it->second.reservation;
  if (absl::Status s = pool_->Release(r.blocks); !s.ok()) {
    // The table holds one reference per block; anything else means someone released ours.
    std::fprintf(stderr, "ReservationTable: releasing %s failed: %s\n", reservation_id.c_str(),
                 std::string(s.message()).c_str());
    std::abort();
  }
  num_reserved_blocks_ -= static_cast<int64_t>(r.blocks.size());
  by_request_.erase(r.request_id);
  by_id_.erase(it);
}

void ReservationTable::SweepExpired() {
  const absl::Time now = clock_->Now();
  std::vector<std::string> due;
  for (const auto& [id, entry] : by_id_) {
    if (now >= entry.reservation.expires_at) due.push_back(id);
  }
  for (const std::string& id : due) {
    const Entry& e = by_id_.find(id)->second;
    ExpiredReservation record;
    record.request_id = e.reservation.request_id;
    record.reservation_id = id;
    record.num_blocks = static_cast<int64_t>(e.reservation.blocks.size());
    record.expired_at = e.reservation.expires_at;
    swept_.emplace_back(e.serial, std::move(record));
    Drop(id);
  }
}

std::vector<ExpiredReservation> ReservationTable::ExpireDue() {
  SweepExpired();
  std::sort(swept_.begin(), swept_.end(), [](const auto& a, const auto& b) {
    if (a.second.expired_at != b.second.expired_at) {
      return a.second.expired_at < b.second.expired_at;
    }
    return a.first < b.first;
  });
  std::vector<ExpiredReservation> out;
  out.reserve(swept_.size());
  for (auto& [serial, record] : swept_) out.push_back(std::move(record));
  swept_.clear();
  return out;
}

const Reservation* ReservationTable::Find(std::string_view reservation_id) const {
  auto it = by_id_.find(Key(reservation_id));
  if (it == by_id_.end() || !Live(it->second)) return nullptr;
  return &it->second.reservation;
}

const Reservation* ReservationTable::FindByRequest(const RequestId& request_id) const {
  auto it = by_request_.find(request_id);
  if (it == by_request_.end()) return nullptr;
  return Find(it->second);
}

}  // namespace duet::kv
