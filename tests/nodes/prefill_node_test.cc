// The prefill node's failure paths: a decode node that is gone, one that rejects the transfer
// mid-way (a fake DecodeService), the router cancelling Prefill while the transfer waits for its
// acknowledgement (the decode side sees the abort), and bad requests. In every case the node's
// blocks come back at once.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/rpc/server.h"
#include "common/rpc/status_convert.h"
#include "tests/nodes/node_test_util.h"

namespace duet::nodes_test {
namespace {

using ::testing::HasSubstr;

// A DecodeService whose PushKv either rejects the transfer after `reject_after` chunks or, once
// the last chunk arrived, holds the call until the client cancels it.
class FakeDecode final : public v1::DecodeService::CallbackService {
 public:
  FakeDecode(int reject_after, grpc::Status reject)
      : reject_after_(reject_after), reject_(std::move(reject)) {}

  grpc::ServerReadReactor<v1::KvChunk>* PushKv(grpc::CallbackServerContext* /*context*/,
                                               v1::PushKvResponse* /*response*/) override {
    return new Reactor(this);
  }

  bool AwaitLast() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&last_seen_), kWait);
  }
  // The transfer ended from the sender's side: an abort chunk or a cancelled call.
  bool AwaitAborted() {
    absl::MutexLock lock(&mu_);
    auto aborted = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return abort_seen_ || cancelled_; };
    return mu_.AwaitWithTimeout(absl::Condition(&aborted), kWait);
  }
  int chunks_seen() {
    absl::MutexLock lock(&mu_);
    return chunks_seen_;
  }

 private:
  class Reactor : public grpc::ServerReadReactor<v1::KvChunk> {
   public:
    explicit Reactor(FakeDecode* fake) : fake_(fake) { StartRead(&chunk_); }
    void OnReadDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "ended early"));
        return;
      }
      absl::MutexLock lock(&fake_->mu_);
      ++fake_->chunks_seen_;
      if (!chunk_.abort_reason().empty()) {
        fake_->abort_seen_ = true;
        Finish(grpc::Status(grpc::StatusCode::ABORTED, "aborted"));
        return;
      }
      if (fake_->reject_after_ > 0 && fake_->chunks_seen_ >= fake_->reject_after_) {
        Finish(fake_->reject_);
        return;
      }
      if (chunk_.last()) {
        fake_->last_seen_ = true;
        holding_ = true;  // until the client cancels
        return;
      }
      StartRead(&chunk_);
    }
    void OnCancel() override {
      absl::MutexLock lock(&fake_->mu_);
      fake_->cancelled_ = true;
      if (holding_) Finish(grpc::Status::CANCELLED);
    }
    void OnDone() override { delete this; }

   private:
    FakeDecode* const fake_;
    v1::KvChunk chunk_;
    bool holding_ = false;  // under fake_->mu_
  };

  const int reject_after_;
  const grpc::Status reject_;
  absl::Mutex mu_;
  int chunks_seen_ ABSL_GUARDED_BY(mu_) = 0;
  bool last_seen_ ABSL_GUARDED_BY(mu_) = false;
  bool abort_seen_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

std::unique_ptr<rpc::RpcServer> ServeFake(FakeDecode* fake) {
  grpc::Service* const services[] = {fake};
  absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
      rpc::RpcServer::Start({.address = "127.0.0.1:0"}, services);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

PrefillSetup SmallChunks() {
  PrefillSetup p;
  p.options.max_num_seqs = 4;
  p.options.prefill_chunk_tokens = 16;
  p.options.max_num_batched_tokens = 16;
  p.options.layers_per_group = 1;
  p.options.max_chunk_bytes = 2048;
  return p;
}

// A reservation as a decode node of this geometry would hand out.
v1::ReserveResponse FakeReservation() {
  v1::ReserveResponse r;
  r.set_reservation_id("fake/res-1");
  r.set_block_size(16);
  r.set_kv_dtype(v1::KV_DTYPE_FP8_E4M3);
  return r;
}

TEST(PrefillNodeTest, UnreachableDecodeNodeFailsWithUnavailableAndFreesBlocks) {
  std::unique_ptr<PrefillHarness> p = StartPrefill(SmallChunks());
  ASSERT_NE(p, nullptr);
  // A port that was just bound and closed again.
  std::string gone;
  {
    FakeDecode fake(0, grpc::Status::OK);
    std::unique_ptr<rpc::RpcServer> server = ServeFake(&fake);
    ASSERT_NE(server, nullptr);
    gone = server->address();
    server->Shutdown(absl::ZeroDuration());
  }
  v1::PrefillResponse out;
  const grpc::Status s = CallPrefill(
      *p->stub, PrefillFor("r-1", Prompt(40, 1), Greedy(4), gone, FakeReservation()), &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr(absl::StrCat("decode node ", gone)));
  EXPECT_TRUE(AwaitPrefillIdle(*p));
}

TEST(PrefillNodeTest, DecodeNodeRejectingMidTransferStopsThePrefill) {
  std::unique_ptr<PrefillHarness> p = StartPrefill(SmallChunks());
  ASSERT_NE(p, nullptr);
  FakeDecode fake(2, grpc::Status(grpc::StatusCode::DATA_LOSS, "checksum mismatch"));
  std::unique_ptr<rpc::RpcServer> server = ServeFake(&fake);
  ASSERT_NE(server, nullptr);
  v1::PrefillResponse out;
  const grpc::Status s = CallPrefill(
      *p->stub, PrefillFor("r-1", Prompt(200, 1), Greedy(4), server->address(), FakeReservation()),
      &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("DATA_LOSS: checksum mismatch"));
  EXPECT_THAT(s.error_message(), HasSubstr(server->address()));
  EXPECT_TRUE(AwaitPrefillIdle(*p));
  // Nothing more was sent after the rejection.
  EXPECT_EQ(fake.chunks_seen(), 2);
}

TEST(PrefillNodeTest, UnknownReservationFailsWithTheDecodeNodesReason) {
  std::unique_ptr<PrefillHarness> p = StartPrefill(SmallChunks());
  DecodeSetup d;
  d.options.max_num_seqs = 4;
  std::unique_ptr<DecodeHarness> decode = StartDecode(d);
  ASSERT_NE(p, nullptr);
  ASSERT_NE(decode, nullptr);
  v1::PrefillResponse out;
  const grpc::Status s = CallPrefill(
      *p->stub, PrefillFor("r-1", Prompt(40, 1), Greedy(4), decode->address, FakeReservation()),
      &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("NOT_FOUND"));
  EXPECT_TRUE(AwaitPrefillIdle(*p));
}

TEST(PrefillNodeTest, CancelledPrefillAbortsTheTransfer) {
  std::unique_ptr<PrefillHarness> p = StartPrefill(SmallChunks());
  ASSERT_NE(p, nullptr);
  FakeDecode fake(0, grpc::Status::OK);  // never acknowledges
  std::unique_ptr<rpc::RpcServer> server = ServeFake(&fake);
  ASSERT_NE(server, nullptr);
  grpc::ClientContext context;
  v1::PrefillResponse out;
  grpc::Status status;
  std::thread call([&] {
    status = p->stub->Prefill(
        &context, PrefillFor("r-1", Prompt(40, 1), Greedy(4), server->address(), FakeReservation()),
        &out);
  });
  ASSERT_TRUE(fake.AwaitLast());
  // The request is in flight (waiting for the acknowledgement): a second one with its id is
  // refused.
  const grpc::Status duplicate = CallPrefill(
      *p->stub, PrefillFor("r-1", Prompt(40, 1), Greedy(4), server->address(), FakeReservation()),
      &out);
  EXPECT_EQ(duplicate.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  context.TryCancel();
  call.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(fake.AwaitAborted());
  EXPECT_TRUE(AwaitPrefillIdle(*p));
}

TEST(PrefillNodeTest, BadRequestsGetPreciseStatuses) {
  PrefillSetup setup = SmallChunks();
  setup.num_blocks = 8;
  std::unique_ptr<PrefillHarness> p = StartPrefill(setup);
  ASSERT_NE(p, nullptr);
  const v1::PrefillRequest good =
      PrefillFor("r-1", Prompt(20, 1), Greedy(4), "127.0.0.1:1", FakeReservation());
  struct Case {
    const char* what;
    std::function<void(v1::PrefillRequest*)> edit;
    grpc::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"no id", [](v1::PrefillRequest* r) { r->clear_request_id(); },
       grpc::StatusCode::INVALID_ARGUMENT, "request_id"},
      {"no tokens", [](v1::PrefillRequest* r) { r->clear_token_ids(); },
       grpc::StatusCode::INVALID_ARGUMENT, "token_ids is empty"},
      {"token outside vocab", [](v1::PrefillRequest* r) { r->set_token_ids(3, -4); },
       grpc::StatusCode::INVALID_ARGUMENT, "token_ids[3] = -4"},
      {"no decode address", [](v1::PrefillRequest* r) { r->clear_decode_address(); },
       grpc::StatusCode::INVALID_ARGUMENT, "decode_address"},
      {"bad decode address", [](v1::PrefillRequest* r) { r->set_decode_address("nowhere"); },
       grpc::StatusCode::INVALID_ARGUMENT, "nowhere"},
      {"block size", [](v1::PrefillRequest* r) { r->set_decode_block_size(32); },
       grpc::StatusCode::FAILED_PRECONDITION, "block size (32)"},
      {"dtype", [](v1::PrefillRequest* r) { r->set_decode_kv_dtype(v1::KV_DTYPE_F16); },
       grpc::StatusCode::FAILED_PRECONDITION, "KV_DTYPE_F16"},
      {"model", [](v1::PrefillRequest* r) { r->set_model_id("gpt-5"); },
       grpc::StatusCode::FAILED_PRECONDITION, "gpt-5"},
      {"sampling", [](v1::PrefillRequest* r) { r->mutable_sampling()->set_top_p(0); },
       grpc::StatusCode::INVALID_ARGUMENT, "top_p"},
      {"too big for the pool",
       [](v1::PrefillRequest* r) {
         for (int i = 0; i < 200; ++i) r->add_token_ids(5);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "has 8 in all"},
      {"past the context",
       [](v1::PrefillRequest* r) {
         for (int i = 0; i < 600; ++i) r->add_token_ids(5);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "context length"},
  };
  for (const Case& c : cases) {
    v1::PrefillRequest r = good;
    c.edit(&r);
    v1::PrefillResponse out;
    const grpc::Status s = CallPrefill(*p->stub, r, &out);
    EXPECT_EQ(s.error_code(), c.code) << c.what << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.message)) << c.what;
  }
  p->node->StartDrain();
  v1::PrefillResponse out;
  const grpc::Status draining = CallPrefill(*p->stub, good, &out);
  EXPECT_EQ(draining.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(rpc::GetRetryAfter(draining).has_value());
  EXPECT_TRUE(p->node->AwaitDrained(kWait));
  EXPECT_TRUE(AwaitPrefillIdle(*p));
}

}  // namespace
}  // namespace duet::nodes_test
