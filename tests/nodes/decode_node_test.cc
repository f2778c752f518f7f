// The decode node's failure paths, driven by a hand-written PushKv client: corrupt, partial or
// aborted transfers fail the call with the receiver's code, free the reservation at once and
// end the token stream with an error (nothing is decoded); leases expire (FakeClock) unless
// chunks renew them; cancelling or releasing frees blocks; preemption ends a stream with a
// retriable error; bad requests get precise statuses.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/kv/kv_payload.h"
#include "common/kv/kv_transfer.h"
#include "common/rpc/status_convert.h"
#include "prefill_node/kv_sender.h"
#include "tests/nodes/node_test_util.h"

namespace duet::nodes_test {
namespace {

using ::testing::HasSubstr;

// One hand-built KvChunk of a transfer of `n` tokens: zero payload (valid F32 KV), correct size
// and checksum.
v1::KvChunk HandChunk(const kv::KvLayout& layout, const std::string& request_id,
                      const std::string& reservation_id, int64_t n, const kv::ChunkRect& rect,
                      int32_t first_token = 0) {
  std::vector<uint8_t> payload(static_cast<size_t>(kv::KvPayloadBytes(
      layout, n, rect.layer_begin, rect.layer_end, rect.block_begin, rect.block_end)));
  return prefill::MakeKvChunk(
      kv::MakeChunkHeader(request_id, reservation_id, n, rect, first_token), std::move(payload),
      v1::KV_DTYPE_F32);
}

// Recomputes a chunk's checksum after a test changed it.
void Reseal(v1::KvChunk* c) {
  kv::KvChunkHeader h;
  h.request_id = c->request_id();
  h.reservation_id = c->reservation_id();
  h.seq_no = c->seq_no();
  h.layer_begin = c->layer_begin();
  h.layer_end = c->layer_end();
  h.block_begin = c->block_begin();
  h.block_end = c->block_end();
  h.num_tokens = c->num_tokens();
  h.last = c->last();
  h.first_token = c->first_token();
  c->set_checksum(kv::KvChunkChecksum(
      h, {reinterpret_cast<const uint8_t*>(c->payload().data()), c->payload().size()}));
}

// A whole transfer: one chunk per layer, the last one carrying `first_token`.
std::vector<v1::KvChunk> LayerChunks(const kv::KvLayout& layout, const std::string& request_id,
                                     const std::string& reservation_id, int64_t n,
                                     int32_t first_token) {
  std::vector<v1::KvChunk> chunks;
  const int32_t blocks = static_cast<int32_t>(kv::NumBlocksFor(layout, n));
  const int32_t layers = static_cast<int32_t>(layout.num_layers);
  for (int32_t l = 0; l < layers; ++l) {
    const kv::ChunkRect rect{static_cast<uint64_t>(l), l, l + 1, 0, blocks, 0, l + 1 == layers};
    chunks.push_back(
        HandChunk(layout, request_id, reservation_id, n, rect, rect.last ? first_token : 0));
  }
  return chunks;
}

// Writes the chunks (stopping at a failed write) and returns the call's status.
grpc::Status Push(v1::DecodeService::Stub& stub, const std::vector<v1::KvChunk>& chunks,
                  v1::PushKvResponse* response = nullptr) {
  grpc::ClientContext context;
  v1::PushKvResponse ignored;
  std::unique_ptr<grpc::ClientWriter<v1::KvChunk>> writer =
      stub.PushKv(&context, response != nullptr ? response : &ignored);
  for (const v1::KvChunk& c : chunks) {
    if (!writer->Write(c)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

DecodeSetup F32Setup() {
  DecodeSetup s;
  s.dtype = kv::CacheDtype::kF32;
  s.num_blocks = 16;
  s.options.max_num_seqs = 4;
  return s;
}

struct Corruption {
  std::string name;
  // Turns a valid transfer into the one to push.
  std::function<void(const kv::KvLayout&, std::vector<v1::KvChunk>*)> mutate;
  grpc::StatusCode code;
  std::string message;
};

void PrintTo(const Corruption& c, std::ostream* os) { *os << c.name; }

class CorruptTransferTest : public ::testing::TestWithParam<Corruption> {};

TEST_P(CorruptTransferTest, FailsFreesTheReservationAndEndsTheStream) {
  const Corruption& c = GetParam();
  std::unique_ptr<DecodeHarness> d = StartDecode(F32Setup());
  ASSERT_NE(d, nullptr);
  const std::vector<int32_t> prompt = Prompt(20, 1);  // 2 blocks, the second partial
  v1::ReserveResponse res;
  ASSERT_TRUE(CallReserve(*d->stub, ReserveFor("r-c", prompt, Greedy(4)), &res).ok());
  EXPECT_EQ(d->node->GetSnapshot().free_blocks, d->total_blocks - 2);
  std::unique_ptr<TokenStreamCall> stream =
      TokenStreamCall::StreamTokens(*d->stub, "r-c", res.reservation_id());
  std::vector<v1::KvChunk> chunks =
      LayerChunks(d->engine->kv_layout(), "r-c", res.reservation_id(), 20, 42);
  c.mutate(d->engine->kv_layout(), &chunks);

  const grpc::Status push = Push(*d->stub, chunks);
  EXPECT_EQ(push.error_code(), c.code) << push.error_message();
  EXPECT_THAT(push.error_message(), HasSubstr(c.message));
  const StreamResult s = stream->ReadAll();
  EXPECT_EQ(s.status.error_code(), c.code) << s.status.error_message();
  EXPECT_THAT(s.status.error_message(), HasSubstr("KV transfer for request r-c failed"));
  EXPECT_TRUE(s.tokens.empty());
  EXPECT_TRUE(AwaitDecodeIdle(*d));
}

std::vector<Corruption> Corruptions() {
  using V = std::vector<v1::KvChunk>;
  return {
      {"bad_checksum",
       [](const kv::KvLayout&, V* v) { (*v)[1].set_checksum((*v)[1].checksum() ^ 1); },
       grpc::StatusCode::DATA_LOSS, "checksum"},
      {"flipped_payload_bit",
       [](const kv::KvLayout&, V* v) { (*v)[0].mutable_payload()->at(7) ^= 0x10; },
       grpc::StatusCode::DATA_LOSS, "checksum"},
      {"seq_gap", [](const kv::KvLayout&, V* v) { v->erase(v->begin() + 1); },
       grpc::StatusCode::FAILED_PRECONDITION, "sequence gap"},
      {"seq_repeat", [](const kv::KvLayout&, V* v) { v->insert(v->begin() + 1, (*v)[0]); },
       grpc::StatusCode::FAILED_PRECONDITION, "duplicate"},
      {"last_with_cells_missing",
       [](const kv::KvLayout& layout, V* v) {
         const std::string request = (*v)[0].request_id(), res = (*v)[0].reservation_id();
         *v = {HandChunk(layout, request, res, 20, {0, 0, 1, 0, 2, 0, true}, 42)};
       },
       grpc::StatusCode::FAILED_PRECONDITION, "missing"},
      {"ends_without_last", [](const kv::KvLayout&, V* v) { v->pop_back(); },
       grpc::StatusCode::FAILED_PRECONDITION, "without its last chunk"},
      {"wrong_payload_size",
       [](const kv::KvLayout&, V* v) {
         (*v)[0].mutable_payload()->pop_back();
         Reseal(&(*v)[0]);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "payload of"},
      {"other_request",
       [](const kv::KvLayout&, V* v) {
         (*v)[1].set_request_id("r-other");
         Reseal(&(*v)[1]);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "r-other"},
      {"wrong_dtype", [](const kv::KvLayout&, V* v) { (*v)[0].set_kv_dtype(v1::KV_DTYPE_F16); },
       grpc::StatusCode::INVALID_ARGUMENT, "kv_dtype"},
      {"unknown_format_version", [](const kv::KvLayout&, V* v) { (*v)[0].set_format_version(99); },
       grpc::StatusCode::INVALID_ARGUMENT, "format_version 99"},
      {"nonzero_slot_past_the_prompt",
       [](const kv::KvLayout& layout, V* v) {
         // Layer 0's K cell of block 1 (positions 16..31, 4 valid): slot 10 of head 0.
         const int64_t cell0 = kv::KvCellBytes(layout, 20, 0);
         (*v)[0].mutable_payload()->at(static_cast<size_t>(cell0 + 10 * layout.head_dim * 4)) = 1;
         Reseal(&(*v)[0]);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "nonzero data in slot 10"},
      {"sender_aborts",
       [](const kv::KvLayout&, V* v) {
         v1::KvChunk abort;
         abort.set_request_id("r-c");
         abort.set_reservation_id((*v)[0].reservation_id());
         abort.set_abort_reason("router cancelled");
         v->resize(1);
         v->push_back(abort);
       },
       grpc::StatusCode::ABORTED, "router cancelled"},
  };
}

INSTANTIATE_TEST_SUITE_P(Cases, CorruptTransferTest, ::testing::ValuesIn(Corruptions()),
                         [](const ::testing::TestParamInfo<Corruption>& p) {
                           return p.param.name;
                         });

TEST(DecodeNodeTest, HandBuiltTransferDecodesAndReportsCounts) {
  std::unique_ptr<DecodeHarness> d = StartDecode(F32Setup());
  ASSERT_NE(d, nullptr);
  const std::vector<int32_t> prompt = Prompt(20, 1);
  v1::ReserveResponse res;
  ASSERT_TRUE(CallReserve(*d->stub, ReserveFor("r-ok", prompt, Greedy(3)), &res).ok());
  EXPECT_EQ(res.num_blocks(), 2);
  EXPECT_EQ(res.block_size(), 16);
  EXPECT_EQ(res.kv_dtype(), v1::KV_DTYPE_F32);
  EXPECT_THAT(res.reservation_id(), HasSubstr("/res-"));
  std::unique_ptr<TokenStreamCall> stream =
      TokenStreamCall::StreamTokens(*d->stub, "r-ok", res.reservation_id());
  v1::PushKvResponse ack;
  const grpc::Status push = Push(
      *d->stub, LayerChunks(d->engine->kv_layout(), "r-ok", res.reservation_id(), 20, 42), &ack);
  ASSERT_TRUE(push.ok()) << push.error_message();
  EXPECT_EQ(ack.num_chunks_received(), 4);
  EXPECT_EQ(ack.num_blocks_received(), 2);
  const StreamResult s = stream->ReadAll();
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  ASSERT_EQ(s.tokens.size(), 3u);
  EXPECT_EQ(s.tokens[0], 42);  // the first token comes from the last chunk
  EXPECT_EQ(s.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(AwaitDecodeIdle(*d));
}

TEST(DecodeNodeTest, TokensProducedBeforeStreamTokensOpensAreBuffered) {
  std::unique_ptr<DecodeHarness> d = StartDecode(F32Setup());
  ASSERT_NE(d, nullptr);
  v1::ReserveResponse res;
  ASSERT_TRUE(CallReserve(*d->stub, ReserveFor("r-b", Prompt(9, 2), Greedy(5)), &res).ok());
  ASSERT_TRUE(
      Push(*d->stub, LayerChunks(d->engine->kv_layout(), "r-b", res.reservation_id(), 9, 7)).ok());
  // The request finishes with nobody listening; its result waits for StreamTokens.
  ASSERT_TRUE(d->node->AwaitState(
      [](const decode::DecodeNode::Snapshot& s) {
        return s.num_running == 0 && s.free_blocks == 16;
      },
      kWait));
  const StreamResult s =
      TokenStreamCall::StreamTokens(*d->stub, "r-b", res.reservation_id())->ReadAll();
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  EXPECT_EQ(s.tokens.size(), 5u);
  EXPECT_EQ(s.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(AwaitDecodeIdle(*d));
}

TEST(DecodeNodeTest, ExpiredLeaseFreesTheBlocksAndEndsTheStream) {
  FakeClock clock;
  DecodeSetup setup = F32Setup();
  setup.options.clock = &clock;
  std::unique_ptr<DecodeHarness> d = StartDecode(setup);
  ASSERT_NE(d, nullptr);
  v1::ReserveResponse res;
  ASSERT_TRUE(
      CallReserve(*d->stub, ReserveFor("r-l", Prompt(40, 3), Greedy(4), /*lease_ms=*/100), &res)
          .ok());
  EXPECT_EQ(d->node->GetSnapshot().free_blocks, 13);
  clock.Advance(absl::Milliseconds(100));
  d->node->Kick();
  ASSERT_TRUE(d->node->AwaitState(
      [](const decode::DecodeNode::Snapshot& s) {
        return s.free_blocks == 16 && s.free_tail_slots == 4 && s.num_reservations == 0;
      },
      kWait));
  // The KV arriving late is refused; the stream reports the expiry.
  const grpc::Status push =
      Push(*d->stub, LayerChunks(d->engine->kv_layout(), "r-l", res.reservation_id(), 40, 1));
  EXPECT_EQ(push.error_code(), grpc::StatusCode::NOT_FOUND) << push.error_message();
  const StreamResult s =
      TokenStreamCall::StreamTokens(*d->stub, "r-l", res.reservation_id())->ReadAll();
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_THAT(s.status.error_message(), HasSubstr("expired"));
  EXPECT_TRUE(AwaitDecodeIdle(*d));
}

TEST(DecodeNodeTest, EachAcceptedChunkRenewsTheLease) {
  FakeClock clock;
  DecodeSetup setup = F32Setup();
  setup.options.clock = &clock;
  std::unique_ptr<DecodeHarness> d = StartDecode(setup);
  ASSERT_NE(d, nullptr);
  v1::ReserveResponse res;
  ASSERT_TRUE(
      CallReserve(*d->stub, ReserveFor("r-r", Prompt(20, 3), Greedy(2), /*lease_ms=*/100), &res)
          .ok());
  std::unique_ptr<TokenStreamCall> stream =
      TokenStreamCall::StreamTokens(*d->stub, "r-r", res.reservation_id());
  const std::vector<v1::KvChunk> chunks =
      LayerChunks(d->engine->kv_layout(), "r-r", res.reservation_id(), 20, 5);
  grpc::ClientContext context;
  v1::PushKvResponse ack;
  std::unique_ptr<grpc::ClientWriter<v1::KvChunk>> writer = d->stub->PushKv(&context, &ack);
  // 4 chunks, 80 ms apart: 320 ms in all, but never 100 ms without a chunk.
  for (size_t i = 0; i < chunks.size(); ++i) {
    clock.Advance(absl::Milliseconds(80));
    d->node->Kick();
    ASSERT_TRUE(writer->Write(chunks[i]));
    const int64_t want = static_cast<int64_t>(i) + 1;
    ASSERT_TRUE(d->node->AwaitState(
        [want](const decode::DecodeNode::Snapshot& s) { return s.num_chunks_accepted == want; },
        kWait));
  }
  writer->WritesDone();
  const grpc::Status push = writer->Finish();
  ASSERT_TRUE(push.ok()) << push.error_message();
  const StreamResult s = stream->ReadAll();
  EXPECT_TRUE(s.status.ok()) << s.status.error_message();
  EXPECT_EQ(s.tokens.size(), 2u);
}

TEST(DecodeNodeTest, CancellingStreamTokensOfAReservationFreesItsBlocks) {
  std::unique_ptr<DecodeHarness> d = StartDecode(F32Setup());
  ASSERT_NE(d, nullptr);
  v1::ReserveResponse res;
  ASSERT_TRUE(CallReserve(*d->stub, ReserveFor("r-x", Prompt(50, 4), Greedy(4)), &res).ok());
  std::unique_ptr<TokenStreamCall> stream =
      TokenStreamCall::StreamTokens(*d->stub, "r-x", res.reservation_id());
  ASSERT_TRUE(d->node->AwaitState(
      [](const decode::DecodeNode::Snapshot& s) { return s.num_open_streams == 1; }, kWait));
  EXPECT_EQ(d->node->GetSnapshot().free_blocks, 12);
  stream->Cancel();
  EXPECT_EQ(stream->ReadAll().status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(AwaitDecodeIdle(*d));
  // The transfer that comes afterwards finds no reservation.
  EXPECT_EQ(Push(*d->stub, LayerChunks(d->engine->kv_layout(), "r-x", res.reservation_id(), 50, 1))
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST(DecodeNodeTest, CancellingStreamTokensWhileDecodingFreesItsBlocks) {
  std::unique_ptr<DecodeHarness> d = StartDecode(F32Setup());
  ASSERT_NE(d, nullptr);
  v1::ReserveResponse res;
  ASSERT_TRUE(CallReserve(*d->stub, ReserveFor("r-y", Prompt(30, 4), Greedy(200)), &res).ok());
  std::unique_ptr<TokenStreamCall> stream =
      TokenStreamCall::StreamTokens(*d->stub, "r-y", res.reservation_id());
  ASSERT_TRUE(
      Push(*d->stub, LayerChunks(d->engine->kv_layout(), "r-y", res.reservation_id(), 30, 9)).ok());
  StreamResult first;
  ASSERT_TRUE(stream->ReadOne(&first));
  stream->Cancel();
  const StreamResult s = stream->ReadAll();
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(s.tokens.size(), 200u);
  EXPECT_TRUE(AwaitDecodeIdle(*d));
}

TEST(DecodeNodeTest, ReleaseDropsReservationsAndRunningSequencesIdempotently) {
  std::unique_ptr<DecodeHarness> d = StartDecode(F32Setup());
  ASSERT_NE(d, nullptr);
  v1::ReserveResponse res;
  ASSERT_TRUE(CallReserve(*d->stub, ReserveFor("r-1", Prompt(40, 4), Greedy(4)), &res).ok());
  v1::ReleaseRequest release;
  release.set_request_id("r-1");
  release.set_reservation_id(res.reservation_id());
  release.set_reason("prefill failed");
  v1::ReleaseResponse out;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(d->stub->Release(&context, release, &out).ok());
  }
  EXPECT_TRUE(out.released());
  EXPECT_EQ(out.num_blocks_freed(), 3);
  EXPECT_EQ(d->node->GetSnapshot().free_blocks, 16);
  {
    grpc::ClientContext context;
    ASSERT_TRUE(d->stub->Release(&context, release, &out).ok());
  }
  EXPECT_FALSE(out.released());
  EXPECT_EQ(out.num_blocks_freed(), 0);

  // A decoding sequence.
  ASSERT_TRUE(CallReserve(*d->stub, ReserveFor("r-2", Prompt(30, 4), Greedy(200)), &res).ok());
  std::unique_ptr<TokenStreamCall> stream =
      TokenStreamCall::StreamTokens(*d->stub, "r-2", res.reservation_id());
  ASSERT_TRUE(
      Push(*d->stub, LayerChunks(d->engine->kv_layout(), "r-2", res.reservation_id(), 30, 9)).ok());
  StreamResult first;
  ASSERT_TRUE(stream->ReadOne(&first));
  release.set_request_id("r-2");
  release.set_reservation_id(res.reservation_id());
  {
    grpc::ClientContext context;
    ASSERT_TRUE(d->stub->Release(&context, release, &out).ok());
  }
  EXPECT_TRUE(out.released());
  EXPECT_GE(out.num_blocks_freed(), 2);
  const StreamResult s = stream->ReadAll();
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_THAT(s.status.error_message(), HasSubstr("prefill failed"));
  EXPECT_EQ(s.finish, v1::FINISH_REASON_ERROR);  // tokens had been streamed
  EXPECT_TRUE(AwaitDecodeIdle(*d));
}

TEST(DecodeNodeTest, BadRequestsGetPreciseStatuses) {
  std::unique_ptr<DecodeHarness> d = StartDecode(F32Setup());
  ASSERT_NE(d, nullptr);
  const std::vector<int32_t> prompt = Prompt(10, 1);
  auto reserve = [&](const std::function<void(v1::ReserveRequest*)>& edit) {
    v1::ReserveRequest r = ReserveFor("r-bad", prompt, Greedy(4));
    edit(&r);
    v1::ReserveResponse out;
    return CallReserve(*d->stub, r, &out);
  };
  struct Case {
    const char* what;
    std::function<void(v1::ReserveRequest*)> edit;
    grpc::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"no id", [](v1::ReserveRequest* r) { r->clear_request_id(); },
       grpc::StatusCode::INVALID_ARGUMENT, "request_id"},
      {"no tokens",
       [](v1::ReserveRequest* r) {
         r->set_num_prompt_tokens(0);
         r->clear_prompt_token_ids();
       },
       grpc::StatusCode::INVALID_ARGUMENT, "num_prompt_tokens"},
      {"no lease", [](v1::ReserveRequest* r) { r->set_lease_ms(0); },
       grpc::StatusCode::INVALID_ARGUMENT, "lease_ms"},
      {"ids mismatch", [](v1::ReserveRequest* r) { r->add_prompt_token_ids(5); },
       grpc::StatusCode::INVALID_ARGUMENT, "prompt_token_ids has 11"},
      {"id outside vocab", [](v1::ReserveRequest* r) { r->set_prompt_token_ids(2, 260); },
       grpc::StatusCode::INVALID_ARGUMENT, "prompt_token_ids[2] = 260"},
      {"no max_tokens", [](v1::ReserveRequest* r) { r->mutable_sampling()->clear_max_tokens(); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_tokens"},
      {"bad temperature", [](v1::ReserveRequest* r) { r->mutable_sampling()->set_temperature(-1); },
       grpc::StatusCode::INVALID_ARGUMENT, "temperature"},
      {"past context", [](v1::ReserveRequest* r) { r->mutable_sampling()->set_max_tokens(503); },
       grpc::StatusCode::INVALID_ARGUMENT, "context length of 512"},
      {"never fits", [](v1::ReserveRequest* r) { r->mutable_sampling()->set_max_tokens(300); },
       grpc::StatusCode::INVALID_ARGUMENT, "has 16 in all"},
      {"other model", [](v1::ReserveRequest* r) { r->set_model_id("llama-70b"); },
       grpc::StatusCode::FAILED_PRECONDITION, "llama-70b"},
  };
  for (const Case& c : cases) {
    const grpc::Status s = reserve(c.edit);
    EXPECT_EQ(s.error_code(), c.code) << c.what << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.message)) << c.what;
  }

  v1::ReserveResponse res;
  ASSERT_TRUE(CallReserve(*d->stub, ReserveFor("r-dup", prompt, Greedy(200)), &res).ok());
  EXPECT_EQ(CallReserve(*d->stub, ReserveFor("r-dup", prompt, Greedy(4)), &res).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  // Full pool: RESOURCE_EXHAUSTED with a retry-after hint.
  const grpc::Status full =
      CallReserve(*d->stub, ReserveFor("r-big", Prompt(250, 2), Greedy(1)), &res);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << full.error_message();
  EXPECT_TRUE(rpc::GetRetryAfter(full).has_value());

  EXPECT_EQ(TokenStreamCall::StreamTokens(*d->stub, "r-nope", "x")->ReadAll().status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(
      TokenStreamCall::StreamTokens(*d->stub, "r-dup", "wrong")->ReadAll().status.error_code(),
      grpc::StatusCode::NOT_FOUND);
  v1::KvChunk stray;
  stray.set_request_id("r-nope");
  stray.set_reservation_id("decode/res-999");
  EXPECT_EQ(Push(*d->stub, {stray}).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Push(*d->stub, {}).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  v1::RunRequest run;
  run.set_request_id("r-run");
  run.add_token_ids(5);
  *run.mutable_sampling() = Greedy(2);
  EXPECT_EQ(TokenStreamCall::Run(*d->stub, run)->ReadAll().status.error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  // A second StreamTokens for a request whose stream is open (it has delivered a token).
  std::unique_ptr<TokenStreamCall> first =
      TokenStreamCall::StreamTokens(*d->stub, "r-dup", res.reservation_id());
  ASSERT_TRUE(
      Push(*d->stub, LayerChunks(d->engine->kv_layout(), "r-dup", res.reservation_id(), 10, 3))
          .ok());
  StreamResult one;
  ASSERT_TRUE(first->ReadOne(&one));
  const grpc::Status second =
      TokenStreamCall::StreamTokens(*d->stub, "r-dup", res.reservation_id())->ReadAll().status;
  EXPECT_EQ(second.error_code(), grpc::StatusCode::ALREADY_EXISTS) << second.error_message();
  first->Cancel();
  EXPECT_EQ(first->ReadAll().status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(AwaitDecodeIdle(*d));
}

TEST(DecodeNodeTest, DrainRefusesNewWorkAndFinishesInFlightWork) {
  std::unique_ptr<DecodeHarness> d = StartDecode(F32Setup());
  ASSERT_NE(d, nullptr);
  v1::ReserveResponse res;
  ASSERT_TRUE(CallReserve(*d->stub, ReserveFor("r-d", Prompt(20, 4), Greedy(6)), &res).ok());
  d->node->StartDrain();
  v1::ReserveResponse refused_response;
  const grpc::Status refused =
      CallReserve(*d->stub, ReserveFor("r-e", Prompt(20, 4), Greedy(6)), &refused_response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(refused.error_message(), HasSubstr("draining"));
  EXPECT_TRUE(rpc::GetRetryAfter(refused).has_value());
  EXPECT_FALSE(d->node->AwaitDrained(absl::ZeroDuration()));
  std::unique_ptr<TokenStreamCall> stream =
      TokenStreamCall::StreamTokens(*d->stub, "r-d", res.reservation_id());
  ASSERT_TRUE(
      Push(*d->stub, LayerChunks(d->engine->kv_layout(), "r-d", res.reservation_id(), 20, 3)).ok());
  EXPECT_EQ(stream->ReadAll().tokens.size(), 6u);
  EXPECT_TRUE(d->node->AwaitDrained(kWait));
}

}  // namespace
}  // namespace duet::nodes_test
