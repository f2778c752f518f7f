// Fake decode and prefill nodes for the router's end-to-end tests: real gRPC servers on
// 127.0.0.1:0 that follow scripts and record what the router asked of them.
//
// The KV transfer is simulated in process: a FakePrefillNode "pushes" by calling
// FakeDecodeNode::Push() on the node at PrefillRequest.decode_address (looked up through the
// FakeCluster), which starts that reservation's scripted token stream.
//
// Waiting: every recorded observation signals a condition; tests wait with WaitFor() (bounded),
// never with sleeps.
#ifndef DUET_TESTS_ROUTER_FAKE_NODES_H_
#define DUET_TESTS_ROUTER_FAKE_NODES_H_

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/rpc/server.h"
#include "duet/v1/internal.grpc.pb.h"

namespace duet::router::testing {

// What a fake decode node streams for every request (StreamTokens after the push, or Run).
struct DecodeScript {
  std::vector<duet::v1::TokenEvent> events;
  // After the events: wait until the call is cancelled (true), or end with final_status.
  bool hang_after_events = false;
  grpc::Status final_status;
};

struct DecodeObservations {
  std::vector<duet::v1::ReserveRequest> reserves;
  // The deadline of each Reserve call as the node saw it.
  std::vector<std::chrono::system_clock::time_point> reserve_deadlines;
  std::vector<duet::v1::StreamTokensRequest> streams;
  std::vector<duet::v1::ReleaseRequest> releases;
  std::vector<duet::v1::RunRequest> runs;
  int streams_cancelled = 0;  // StreamTokens / Run calls that saw OnCancel
  int streams_finished = 0;   // ... that ended (any way)
};

class FakeDecodeNode final : public duet::v1::DecodeService::CallbackService {
 public:
  explicit FakeDecodeNode(std::string id) : id_(std::move(id)) {}
  ~FakeDecodeNode() override;

  // Serves on 127.0.0.1:0.
  absl::Status Start();
  // Shuts the server down (in-flight calls are cancelled). Idempotent.
  void Stop();
  const std::string& id() const { return id_; }
  const std::string& address() const { return address_; }

  void SetScript(DecodeScript script);
  // Reserve answers this (when not OK) instead of reserving.
  void SetReserveError(grpc::Status status);
  // The KV of `reservation_id` arrived: its token stream starts. False for an unknown
  // reservation.
  bool Push(const std::string& reservation_id);

  // Waits (up to `timeout`) until `done(observations)`; the predicate runs under the node's lock.
  bool WaitFor(const std::function<bool(const DecodeObservations&)>& done,
               absl::Duration timeout = absl::Seconds(10));
  DecodeObservations observations();

  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* context,
                                    const duet::v1::ReserveRequest* request,
                                    duet::v1::ReserveResponse* response) override;
  grpc::ServerWriteReactor<duet::v1::TokenEvent>* StreamTokens(
      grpc::CallbackServerContext* context, const duet::v1::StreamTokensRequest* request) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const duet::v1::ReleaseRequest* request,
                                    duet::v1::ReleaseResponse* response) override;
  grpc::ServerWriteReactor<duet::v1::TokenEvent>* Run(grpc::CallbackServerContext* context,
                                                      const duet::v1::RunRequest* request) override;

 private:
  class Stream;
  struct Reservation {
    bool pushed = false;
    Stream* stream = nullptr;  // the StreamTokens call, once open
  };

  const std::string id_;
  std::string address_;
  std::unique_ptr<rpc::RpcServer> server_;
  absl::Mutex mu_;
  DecodeScript script_ ABSL_GUARDED_BY(mu_);
  grpc::Status reserve_error_ ABSL_GUARDED_BY(mu_);
  int next_reservation_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
  DecodeObservations observed_ ABSL_GUARDED_BY(mu_);
};

// Finds the fake decode node serving an address (nullptr when none).
using DecodeLookup = std::function<FakeDecodeNode*(const std::string& address)>;

enum class PrefillBehavior {
  kPush,  // push the KV to the decode node, then answer OK
  kFail,  // answer the configured error without pushing
  kHang,  // answer only when cancelled
};

struct PrefillObservations {
  std::vector<duet::v1::PrefillRequest> prefills;
  int cancelled = 0;  // Prefill calls that saw OnCancel
};

class FakePrefillNode final : public duet::v1::PrefillService::CallbackService {
 public:
  FakePrefillNode(std::string id, DecodeLookup lookup)
      : id_(std::move(id)), lookup_(std::move(lookup)) {}
  ~FakePrefillNode() override;

  absl::Status Start();
  void Stop();
  const std::string& id() const { return id_; }
  const std::string& address() const { return address_; }

  void SetBehavior(PrefillBehavior behavior, grpc::Status error = grpc::Status::OK);
  // PrefillResponse.cached_prompt_tokens of successful prefills.
  void SetCachedPromptTokens(int64_t n);

  bool WaitFor(const std::function<bool(const PrefillObservations&)>& done,
               absl::Duration timeout = absl::Seconds(10));
  PrefillObservations observations();

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const duet::v1::PrefillRequest* request,
                                    duet::v1::PrefillResponse* response) override;

 private:
  class Hang;

  const std::string id_;
  const DecodeLookup lookup_;
  std::string address_;
  std::unique_ptr<rpc::RpcServer> server_;
  absl::Mutex mu_;
  PrefillBehavior behavior_ ABSL_GUARDED_BY(mu_) = PrefillBehavior::kPush;
  grpc::Status error_ ABSL_GUARDED_BY(mu_);
  int64_t cached_prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  PrefillObservations observed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace duet::router::testing

#endif  // DUET_TESTS_ROUTER_FAKE_NODES_H_
