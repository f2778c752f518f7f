// Decode-side KV reservations: blocks set aside for a request whose KV is on its way from a
// prefill node, held under a lease so an abandoned transfer never leaks them.
//
// Life of a reservation: Reserve() takes the blocks from the pool (all or nothing) and starts a
// lease; Touch() renews it as chunks arrive; then exactly one of
//   - Claim(): the transfer completed; the blocks become the running sequence's (ownership of
//     the pool references moves to the caller) and the table forgets the reservation;
//   - Release(): the transfer failed or was cancelled; the blocks go back to the pool at once;
//   - expiry: the lease passed; the blocks go back to the pool and ExpireDue() reports it.
// A reservation whose lease has passed (clock->Now() >= expires_at) is dead to every call but
// Release() and ExpireDue(), even before it is swept: Touch/Claim answer NOT_FOUND, Find* return
// null. Reserve() sweeps due reservations first (so their blocks are reusable at once and an
// expired request may reserve again); what any sweep frees is reported by the next ExpireDue().
//
// The table holds one pool reference per reserved block and never touches claimed blocks again.
// Destroying the table releases every reservation it still holds.
//
// Thread safety: not thread-safe; the decode node serializes calls under its own mutex.
#ifndef DUET_COMMON_KV_RESERVATIONS_H_
#define DUET_COMMON_KV_RESERVATIONS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/base/clock.h"
#include "common/base/ids.h"
#include "common/kv/block_pool.h"

namespace duet::kv {

struct Reservation {
  std::string reservation_id;  // "res-<n>", unique within this table
  RequestId request_id;
  std::vector<int32_t> blocks;  // pool block ids, in allocation order
  absl::Duration lease;         // how far each Touch() pushes the expiry
  absl::Time expires_at;
};

struct ExpiredReservation {
  RequestId request_id;
  std::string reservation_id;
  int64_t num_blocks = 0;
  absl::Time expired_at;  // the lease's end, not when the sweep ran
};

class ReservationTable {
 public:
  // `pool` and `clock` are not owned and must outlive the table. `id_prefix` starts every
  // reservation id (e.g. "decode-0/res-" to make ids unique across nodes).
  ReservationTable(BlockPool* pool, Clock* clock, std::string id_prefix = "res-");
  ~ReservationTable();
  ReservationTable(const ReservationTable&) = delete;
  ReservationTable& operator=(const ReservationTable&) = delete;

  // Takes `num_blocks` blocks for `request_id` with a lease ending at Now() + lease.
  // INVALID_ARGUMENT for an empty request id, num_blocks < 1 or lease <= 0; ALREADY_EXISTS when
  // the request already holds a live reservation; RESOURCE_EXHAUSTED (with the counts) when the
  // pool cannot supply them. On error nothing is held or changed (beyond the expiry sweep).
  // `prefix_blocks` (a decode node's cached prefix of the prompt, one reference each held by
  // the caller) start the reservation's blocks; only the rest, num_blocks - prefix_blocks.size(),
  // is allocated. On success the reservation owns those references too; on error the caller
  // still does.
  absl::StatusOr<Reservation> Reserve(const RequestId& request_id, int64_t num_blocks,
                                      absl::Duration lease,
                                      std::vector<int32_t> prefix_blocks = {});

  // Renews the lease: expires_at = Now() + lease. NOT_FOUND if unknown, claimed, released or
  // expired.
  absl::Status Touch(std::string_view reservation_id);

  // Hands the blocks of a live reservation to the caller, who now owns their pool references
  // (and must Release them to the pool when the sequence ends). The table forgets the
  // reservation. NOT_FOUND if unknown, already claimed, released or expired.
  absl::StatusOr<std::vector<int32_t>> Claim(std::string_view reservation_id);

  // Returns the blocks to the pool at once, whether or not the lease has passed (an expired one
  // released this way is not reported by ExpireDue). NOT_FOUND if the table holds no such
  // reservation.
  absl::Status Release(std::string_view reservation_id);

  // Frees every reservation whose lease has passed at Now() and returns them, together with any
  // swept earlier by Reserve(), ordered by lease end then reservation id number.
  std::vector<ExpiredReservation> ExpireDue();

  // The live reservation, or null (unknown, claimed, released or lease passed). The pointer is
  // valid until the next non-const call.
  const Reservation* Find(std::string_view reservation_id) const;
  const Reservation* FindByRequest(const RequestId& request_id) const;

  // Blocks held by reservations the table still holds (expired but unswept ones included).
  int64_t num_reserved_blocks() const { return num_reserved_blocks_; }
  int64_t num_reservations() const { return static_cast<int64_t>(by_id_.size()); }

 private:
  struct Entry {
    Reservation reservation;
    uint64_t serial = 0;  // the n of "res-<n>", for a deterministic expiry order
  };

  bool Live(const Entry& e) const { return clock_->Now() < e.reservation.expires_at; }
  Entry* FindLive(std::string_view reservation_id);
  // Frees the entry's blocks and erases it from both maps.
  void Drop(const std::string& reservation_id);
  void SweepExpired();

  BlockPool* const pool_;
  Clock* const clock_;
  const std::string id_prefix_;
  uint64_t next_serial_ = 1;
  int64_t num_reserved_blocks_ = 0;
  absl::flat_hash_map<std::string, Entry> by_id_;
  absl::flat_hash_map<RequestId, std::string> by_request_;
  std::vector<std::pair<uint64_t, ExpiredReservation>> swept_;  // (serial, record)
};

}  // namespace duet::kv

#endif  // DUET_COMMON_KV_RESERVATIONS_H_
