#include "common/kv/kv_transfer.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace duet::kv {
namespace {

using ::testing::HasSubstr;

struct Chunk {
  KvChunkHeader header;
  std::vector<uint8_t> payload;
  uint64_t checksum = 0;

  friend bool operator==(const Chunk& a, const Chunk& b) {
    const KvChunkHeader& x = a.header;
    const KvChunkHeader& y = b.header;
    return x.request_id == y.request_id && x.reservation_id == y.reservation_id &&
           x.seq_no == y.seq_no && x.layer_begin == y.layer_begin && x.layer_end == y.layer_end &&
           x.block_begin == y.block_begin && x.block_end == y.block_end &&
           x.num_tokens == y.num_tokens && x.last == y.last && x.first_token == y.first_token &&
           a.payload == b.payload && a.checksum == b.checksum;
  }
};

std::vector<uint8_t> RandomBytes(int64_t n, std::mt19937* rng) {
  std::vector<uint8_t> out(static_cast<size_t>(n));
  for (uint8_t& b : out) b = static_cast<uint8_t>((*rng)() & 0xff);
  return out;
}

// One transfer: its spec (for the receiver), planner options (for the sender) and chunks.
struct Transfer {
  TransferSpec spec;
  PlannerOptions options;
  std::vector<Chunk> chunks;
};

constexpr int32_t kFirstToken = 4242;

// Plans a whole-prompt transfer, one layer ready at a time, with random payload bytes.
Transfer MakeTransfer(int32_t num_layers, int64_t num_tokens, int32_t block_size,
                      int64_t full_cell_bytes, int64_t last_cell_bytes, int64_t budget,
                      std::mt19937* rng, int32_t present_blocks = 0) {
  Transfer t;
  const auto num_blocks = static_cast<int32_t>((num_tokens + block_size - 1) / block_size);
  const PayloadBytesFn bytes =
      UniformCellPayloadBytes(num_blocks, full_cell_bytes, last_cell_bytes);
  t.spec = {.request_id = "r-0001",
            .reservation_id = "res-7",
            .num_layers = num_layers,
            .num_blocks = num_blocks,
            .num_tokens = num_tokens,
            .expected_payload_bytes = bytes,
            .num_present_blocks = present_blocks};
  t.options = {.num_layers = num_layers,
               .num_tokens = num_tokens,
               .block_size = block_size,
               .max_chunk_payload_bytes = budget,
               .skip_blocks = present_blocks,
               .payload_bytes = bytes};
  absl::StatusOr<KvTransferPlanner> planner = KvTransferPlanner::Create(t.options);
  EXPECT_TRUE(planner.ok()) << planner.status();
  if (!planner.ok()) return t;
  for (int32_t l = 1; l <= num_layers; ++l) {
    absl::StatusOr<std::vector<ChunkRect>> rects = planner->OnLayersReady(l);
    EXPECT_TRUE(rects.ok()) << rects.status();
    if (!rects.ok()) return t;
    for (const ChunkRect& r : *rects) {
      Chunk c;
      c.header =
          MakeChunkHeader(t.spec.request_id, t.spec.reservation_id, num_tokens, r, kFirstToken);
      c.payload = RandomBytes(r.payload_bytes, rng);
      c.checksum = KvChunkChecksum(c.header, c.payload);
      t.chunks.push_back(std::move(c));
    }
  }
  return t;
}

// A chunk for an arbitrary header, sized and checksummed to pass everything but what's tested.
Chunk MakeChunk(const Transfer& t, KvChunkHeader h) {
  Chunk c;
  c.header = std::move(h);
  const int64_t n = t.spec.expected_payload_bytes(c.header.layer_begin, c.header.layer_end,
                                                  c.header.block_begin, c.header.block_end);
  c.payload.assign(static_cast<size_t>(std::max<int64_t>(n, 0)), 0x5a);
  c.checksum = KvChunkChecksum(c.header, c.payload);
  return c;
}

absl::Status Deliver(KvTransferReceiver* rx, const Chunk& c) {
  return rx->Accept(c.header, c.payload, c.checksum);
}

// ---- Checksum ------------------------------------------------------------------------------

KvChunkHeader GoldenHeader() {
  KvChunkHeader h;
  h.request_id = "r-00ff";
  h.reservation_id = "res-12";
  h.seq_no = 3;
  h.layer_begin = 2;
  h.layer_end = 4;
  h.block_begin = 1;
  h.block_end = 6;
  h.num_tokens = 90;
  h.last = true;
  h.first_token = 513;
  return h;
}

TEST(KvChunkChecksumTest, PrefixBytesAreTheDocumentedFormat) {
  const std::string prefix = KvChunkChecksumPrefix(GoldenHeader(), 5);
  const std::vector<uint8_t> expected = {
      'D',  'K',  'V', 'C', 1,   0,   0,   0,                                // magic, version 1
      6,    0,    0,   0,   'r', '-', '0', '0', 'f', 'f',                    // request_id
      6,    0,    0,   0,   'r', 'e', 's', '-', '1', '2',                    // reservation_id
      3,    0,    0,   0,   0,   0,   0,   0,                                // seq_no
      2,    0,    0,   0,   4,   0,   0,   0,   1,   0,   0, 0, 6, 0, 0, 0,  // layers, blocks
      90,   0,    0,   0,   0,   0,   0,   0,                                // num_tokens
      1,                                                                     // last
      0x01, 0x02, 0,   0,                                                    // first_token 513
      5,    0,    0,   0,   0,   0,   0,   0};                               // payload length
  EXPECT_EQ(std::vector<uint8_t>(prefix.begin(), prefix.end()), expected);
}

TEST(KvChunkChecksumTest, IsXxh3OfPrefixAndPayloadWithTheDocumentedSeed) {
  const std::vector<uint8_t> payload = {10, 20, 30, 40, 50};
  std::string all = KvChunkChecksumPrefix(GoldenHeader(), payload.size());
  all.append(payload.begin(), payload.end());
  EXPECT_EQ(KvChunkChecksum(GoldenHeader(), payload),
            XXH3_64bits_withSeed(all.data(), all.size(), kKvChunkChecksumSeed));
}

// Pinned once; if this changes, every node of a mixed-version cluster disagrees on every chunk.
TEST(KvChunkChecksumTest, GoldenValue) {
  const std::vector<uint8_t> payload = {10, 20, 30, 40, 50};
  EXPECT_EQ(KvChunkChecksum(GoldenHeader(), payload), 0xb4c9455cbde6d674ULL);
  KvChunkHeader empty;
  EXPECT_EQ(KvChunkChecksum(empty, {}), 0x39866ef9d64f02daULL);
}

TEST(KvChunkChecksumTest, EveryHeaderFieldAndPayloadByteMatters) {
  const std::vector<uint8_t> payload = {10, 20, 30, 40, 50};
  const uint64_t base = KvChunkChecksum(GoldenHeader(), payload);
  std::vector<KvChunkHeader> variants(11, GoldenHeader());
  variants[0].request_id = "r-00fe";
  variants[1].reservation_id = "res-13";
  variants[2].seq_no = 4;
  variants[3].layer_begin = 1;
  variants[4].layer_end = 5;
  variants[5].block_begin = 0;
  variants[6].block_end = 7;
  variants[7].num_tokens = 91;
  variants[8].last = false;
  variants[9].first_token = 512;
  // Moving bytes between the two ids must not collide (the lengths are hashed).
  variants[10].request_id = "r-00ffr";
  variants[10].reservation_id = "es-12";
  for (size_t i = 0; i < variants.size(); ++i) {
    EXPECT_NE(KvChunkChecksum(variants[i], payload), base) << "variant " << i;
  }
  std::vector<uint8_t> flipped = payload;
  flipped[2] ^= 0x10;
  EXPECT_NE(KvChunkChecksum(GoldenHeader(), flipped), base);
  const std::vector<uint8_t> shorter(payload.begin(), payload.end() - 1);
  EXPECT_NE(KvChunkChecksum(GoldenHeader(), shorter), base);
}

// ---- Planner -------------------------------------------------------------------------------

TEST(KvTransferPlannerTest, PacksWholeLayersWithinTheBudget) {
  // 4 layers x 3 blocks, 100 bytes a cell, 40 for the partial last block: 240 bytes a layer.
  const PayloadBytesFn bytes = UniformCellPayloadBytes(3, 100, 40);
  EXPECT_EQ(bytes(0, 1, 0, 3), 240);
  EXPECT_EQ(bytes(0, 2, 1, 2), 200);
  absl::StatusOr<KvTransferPlanner> p = KvTransferPlanner::Create({.num_layers = 4,
                                                                   .num_tokens = 40,
                                                                   .block_size = 16,
                                                                   .max_chunk_payload_bytes = 500,
                                                                   .payload_bytes = bytes});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_blocks(), 3);
  absl::StatusOr<std::vector<ChunkRect>> first = p->OnLayersReady(3);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first,
            (std::vector<ChunkRect>{{0, 0, 2, 0, 3, 480, false}, {1, 2, 3, 0, 3, 240, false}}));
  EXPECT_FALSE(p->done());
  absl::StatusOr<std::vector<ChunkRect>> again = p->OnLayersReady(2);  // nothing new
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->empty());
  absl::StatusOr<std::vector<ChunkRect>> rest = p->OnLayersReady(4);
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ(*rest, (std::vector<ChunkRect>{{2, 3, 4, 0, 3, 240, true}}));
  EXPECT_TRUE(p->done());
  EXPECT_TRUE(p->OnLayersReady(4)->empty());
}

TEST(KvTransferPlannerTest, SplitsALayerByBlocksWhenOneLayerExceedsTheBudget) {
  const PayloadBytesFn bytes = UniformCellPayloadBytes(5, 100, 40);  // 440 bytes a layer
  absl::StatusOr<KvTransferPlanner> p = KvTransferPlanner::Create({.num_layers = 2,
                                                                   .num_tokens = 66,
                                                                   .block_size = 16,
                                                                   .max_chunk_payload_bytes = 200,
                                                                   .payload_bytes = bytes});
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<std::vector<ChunkRect>> rects = p->OnLayersReady(2);
  ASSERT_TRUE(rects.ok());
  EXPECT_EQ(*rects, (std::vector<ChunkRect>{{0, 0, 1, 0, 2, 200, false},
                                            {1, 0, 1, 2, 4, 200, false},
                                            {2, 0, 1, 4, 5, 40, false},
                                            {3, 1, 2, 0, 2, 200, false},
                                            {4, 1, 2, 2, 4, 200, false},
                                            {5, 1, 2, 4, 5, 40, true}}));
}

TEST(KvTransferPlannerTest, ChunkedPrefillSendsEachCellOnceInAStaircase) {
  // 3 layers x 4 blocks; prefill chunk 1 completes blocks [0, 2), chunk 2 the rest.
  const PayloadBytesFn bytes = UniformCellPayloadBytes(4, 10, 10);
  absl::StatusOr<KvTransferPlanner> p = KvTransferPlanner::Create({.num_layers = 3,
                                                                   .num_tokens = 64,
                                                                   .block_size = 16,
                                                                   .max_chunk_payload_bytes = 1000,
                                                                   .payload_bytes = bytes});
  ASSERT_TRUE(p.ok());
  std::vector<ChunkRect> all;
  const std::vector<std::pair<int32_t, int32_t>> ready = {{1, 2}, {3, 2}, {1, 4}, {2, 4}, {3, 4}};
  for (const auto& [layers, blocks] : ready) {
    absl::StatusOr<std::vector<ChunkRect>> rects = p->OnBlocksReady(layers, blocks);
    ASSERT_TRUE(rects.ok()) << rects.status();
    all.insert(all.end(), rects->begin(), rects->end());
  }
  EXPECT_EQ(all, (std::vector<ChunkRect>{{0, 0, 1, 0, 2, 20, false},
                                         {1, 1, 3, 0, 2, 40, false},
                                         {2, 0, 1, 2, 4, 20, false},
                                         {3, 1, 2, 2, 4, 20, false},
                                         {4, 2, 3, 2, 4, 20, true}}));
}

TEST(KvTransferPlannerTest, RejectsBadOptionsAndReadiness) {
  const PayloadBytesFn bytes = UniformCellPayloadBytes(2, 100, 100);
  PlannerOptions o = {.num_layers = 2,
                      .num_tokens = 32,
                      .block_size = 16,
                      .max_chunk_payload_bytes = 99,
                      .payload_bytes = bytes};
  absl::StatusOr<KvTransferPlanner> p = KvTransferPlanner::Create(o);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("cell (layer 0, block 0) has 100 payload bytes"));
  o.max_chunk_payload_bytes = 100;
  o.block_size = 0;
  EXPECT_THAT(KvTransferPlanner::Create(o).status().message(), HasSubstr("block_size (0)"));
  o.block_size = 16;
  o.payload_bytes = nullptr;
  EXPECT_THAT(KvTransferPlanner::Create(o).status().message(), HasSubstr("no payload_bytes"));
  o.payload_bytes = bytes;
  p = KvTransferPlanner::Create(o);
  ASSERT_TRUE(p.ok());
  EXPECT_THAT(p->OnLayersReady(3).status().message(), HasSubstr("ready layers 3 / blocks 2"));
  EXPECT_EQ(p->OnBlocksReady(1, 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p->OnBlocksReady(-1, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p->next_seq_no(), 0u);  // nothing planned by the rejected calls
}

// ---- Receiver: round trip ------------------------------------------------------------------

TEST(KvTransferReceiverTest, PlannedTransferRoundTrips) {
  std::mt19937 rng(11);
  struct Case {
    int32_t layers;
    int64_t tokens;
    int64_t budget;
  };
  for (const Case& c : std::vector<Case>{
           {1, 1, 64}, {3, 70, 100}, {4, 70, 1000}, {6, 300, 250}, {2, 16, 64}, {5, 33, 100000}}) {
    SCOPED_TRACE(testing::Message()
                 << "layers " << c.layers << " tokens " << c.tokens << " budget " << c.budget);
    const Transfer t = MakeTransfer(c.layers, c.tokens, 16, 64, 24, c.budget, &rng);
    ASSERT_FALSE(t.chunks.empty());
    KvTransferReceiver rx(t.spec);
    int64_t bytes = 0;
    for (size_t i = 0; i < t.chunks.size(); ++i) {
      EXPECT_FALSE(rx.complete());
      EXPECT_LE(static_cast<int64_t>(t.chunks[i].payload.size()), c.budget);
      EXPECT_EQ(t.chunks[i].header.last, i + 1 == t.chunks.size());
      ASSERT_TRUE(Deliver(&rx, t.chunks[i]).ok()) << rx.status();
      bytes += static_cast<int64_t>(t.chunks[i].payload.size());
    }
    EXPECT_TRUE(rx.complete());
    EXPECT_EQ(rx.first_token(), kFirstToken);
    EXPECT_EQ(rx.cells_received(), rx.num_cells());
    EXPECT_EQ(rx.bytes_received(), bytes);
    EXPECT_EQ(rx.bytes_received(),
              t.spec.expected_payload_bytes(0, c.layers, 0, t.spec.num_blocks));
    EXPECT_EQ(rx.chunks_received(), t.chunks.size());
  }
}

// A decode node that holds the first blocks already (its prefix cache): the planner never
// sends them, the receiver counts them as received and completes on the rest.
TEST(KvTransferReceiverTest, PresentBlocksAreNeitherSentNorExpected) {
  std::mt19937 rng(12);
  for (const int32_t present : {1, 3, 4}) {
    SCOPED_TRACE(testing::Message() << present << " present blocks");
    const Transfer t = MakeTransfer(3, 70, 16, 64, 24, 100, &rng, present);  // 5 blocks
    ASSERT_FALSE(t.chunks.empty());
    KvTransferReceiver rx(t.spec);
    for (const Chunk& c : t.chunks) {
      EXPECT_GE(c.header.block_begin, present);
      ASSERT_TRUE(Deliver(&rx, c).ok()) << rx.status();
    }
    EXPECT_TRUE(rx.complete());
    EXPECT_EQ(rx.bytes_received(), t.spec.expected_payload_bytes(0, 3, present, 5));
    // A chunk covering a present block overlaps it.
    KvTransferReceiver again(t.spec);
    KvChunkHeader h = t.chunks.front().header;
    h.block_begin = 0;
    const absl::Status s = Deliver(&again, MakeChunk(t, h));
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(s.message(), HasSubstr("overlaps"));
  }
  // Everything present is not a transfer: the last block always travels (with the first
  // token).
  PlannerOptions options = MakeTransfer(1, 32, 16, 64, 64, 100, &rng).options;
  options.skip_blocks = 2;
  EXPECT_THAT(KvTransferPlanner::Create(options).status().message(),
              HasSubstr("skip_blocks (2) must be in [0, 2)"));
  TransferSpec spec = MakeTransfer(1, 32, 16, 64, 64, 100, &rng).spec;
  spec.num_present_blocks = 2;
  EXPECT_EQ(KvTransferReceiver(spec).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Receiver: every corruption and misuse -------------------------------------------------

class ReceiverErrorTest : public ::testing::Test {
 protected:
  // 3 layers x 5 blocks (70 tokens), 100 bytes a cell, 40 for the last block; one layer a chunk.
  ReceiverErrorTest() : rng_(5), t_(MakeTransfer(3, 70, 16, 100, 40, 440, &rng_)), rx_(t_.spec) {}

  // Delivers chunk i; expects OK.
  void Ok(size_t i) { ASSERT_TRUE(Deliver(&rx_, t_.chunks[i]).ok()) << rx_.status(); }

  // Expects `c` to fail with `code` and `message`, then poisoning: the valid next chunk fails
  // with the same status and the transfer never completes.
  void ExpectRejected(const Chunk& c, absl::StatusCode code, const std::string& message) {
    const absl::Status s = Deliver(&rx_, c);
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(s.message(), HasSubstr(message));
    EXPECT_EQ(rx_.status(), s);
    for (const Chunk& next : t_.chunks) EXPECT_EQ(Deliver(&rx_, next), s);
    EXPECT_FALSE(rx_.complete());
    EXPECT_EQ(rx_.first_token(), std::nullopt);
  }

  std::mt19937 rng_;
  Transfer t_;
  KvTransferReceiver rx_;
};

TEST_F(ReceiverErrorTest, TheFixtureIsOneLayerAChunk) {
  ASSERT_EQ(t_.chunks.size(), 3u);
  EXPECT_EQ(t_.chunks[0].payload.size(), 440u);
}

TEST_F(ReceiverErrorTest, FlippedPayloadByteIsDataLoss) {
  Ok(0);
  Chunk c = t_.chunks[1];
  c.payload[17] ^= 0x01;
  ExpectRejected(c, absl::StatusCode::kDataLoss, "seq 1 of request r-0001: checksum mismatch");
  EXPECT_EQ(rx_.cells_received(), 5);  // only chunk 0 counted
}

TEST_F(ReceiverErrorTest, FlippedHeaderFieldWithTheOriginalChecksumIsDataLoss) {
  const auto flips =
      std::vector<void (*)(KvChunkHeader*)>{[](KvChunkHeader* h) { h->request_id = "r-0002"; },
                                            [](KvChunkHeader* h) { h->reservation_id = "res-8"; },
                                            [](KvChunkHeader* h) { h->seq_no ^= 1; },
                                            [](KvChunkHeader* h) { h->layer_begin ^= 1; },
                                            [](KvChunkHeader* h) { h->layer_end ^= 1; },
                                            [](KvChunkHeader* h) { h->block_begin ^= 1; },
                                            [](KvChunkHeader* h) { h->block_end ^= 2; },
                                            [](KvChunkHeader* h) { h->num_tokens ^= 1; },
                                            [](KvChunkHeader* h) { h->last = !h->last; },
                                            [](KvChunkHeader* h) { h->first_token ^= 1; }};
  for (size_t i = 0; i < flips.size(); ++i) {
    KvTransferReceiver rx(t_.spec);
    Chunk c = t_.chunks[0];
    flips[i](&c.header);
    const absl::Status s = Deliver(&rx, c);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "flip " << i << ": " << s;
  }
}

TEST_F(ReceiverErrorTest, WrongChecksumValueIsDataLoss) {
  Chunk c = t_.chunks[0];
  c.checksum ^= 1ULL << 63;
  ExpectRejected(c, absl::StatusCode::kDataLoss, "checksum mismatch");
}

TEST_F(ReceiverErrorTest, WrongRequestId) {
  KvChunkHeader h = t_.chunks[0].header;
  h.request_id = "r-9999";
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kInvalidArgument,
                 "carries request id 'r-9999'");
}

TEST_F(ReceiverErrorTest, WrongReservationId) {
  KvChunkHeader h = t_.chunks[0].header;
  h.reservation_id = "res-6";
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kInvalidArgument,
                 "reservation id 'res-6' is not 'res-7'");
}

TEST_F(ReceiverErrorTest, LayerRangeOutOfBounds) {
  KvChunkHeader h = t_.chunks[0].header;
  h.layer_begin = 2;
  h.layer_end = 4;
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kInvalidArgument,
                 "layers [2, 4) x blocks [0, 5) has an empty or out-of-range layer range "
                 "(num_layers 3)");
}

TEST_F(ReceiverErrorTest, NegativeLayer) {
  KvChunkHeader h = t_.chunks[0].header;
  h.layer_begin = -1;
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kInvalidArgument, "layer range");
}

TEST_F(ReceiverErrorTest, EmptyBlockRange) {
  KvChunkHeader h = t_.chunks[0].header;
  h.block_begin = 3;
  h.block_end = 3;
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kInvalidArgument,
                 "empty or out-of-range block range (num_blocks 5)");
}

TEST_F(ReceiverErrorTest, BlockRangeOutOfBounds) {
  KvChunkHeader h = t_.chunks[0].header;
  h.block_end = 6;
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kInvalidArgument, "block range");
}

TEST_F(ReceiverErrorTest, NumTokensMismatch) {
  KvChunkHeader h = t_.chunks[0].header;
  h.num_tokens = 71;
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kInvalidArgument,
                 "num_tokens 71 but the transfer has 70");
}

TEST_F(ReceiverErrorTest, PayloadSizeMismatch) {
  Chunk c = t_.chunks[0];
  c.payload.pop_back();
  c.checksum = KvChunkChecksum(c.header, c.payload);
  ExpectRejected(c, absl::StatusCode::kInvalidArgument,
                 "payload of 439 bytes for layers [0, 1) x blocks [0, 5), expected 440");
}

TEST_F(ReceiverErrorTest, DuplicateSequenceNumber) {
  Ok(0);
  Ok(1);
  ExpectRejected(t_.chunks[1], absl::StatusCode::kFailedPrecondition,
                 "seq 1 of request r-0001: duplicate or replayed sequence number; next "
                 "expected 2");
  EXPECT_EQ(rx_.chunks_received(), 2u);
}

TEST_F(ReceiverErrorTest, SequenceGap) {
  Ok(0);
  ExpectRejected(t_.chunks[2], absl::StatusCode::kFailedPrecondition,
                 "sequence gap; expected seq 1, 1 chunk(s) missing");
}

TEST_F(ReceiverErrorTest, OverlappingRectangle) {
  Ok(0);
  KvChunkHeader h = t_.chunks[1].header;  // seq 1, layer 1
  h.layer_begin = 0;                      // layers [0, 2): layer 0 already received
  h.block_begin = 3;
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kFailedPrecondition,
                 "layers [0, 2) x blocks [3, 5) overlaps 2 cell(s) already received (first: "
                 "layer 0, block 3)");
}

TEST_F(ReceiverErrorTest, LastWithMissingCells) {
  Ok(0);
  KvChunkHeader h = t_.chunks[1].header;
  h.last = true;
  h.first_token = 9;
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kFailedPrecondition,
                 "marked last but 5 of 15 (layer, block) cells are missing");
}

TEST_F(ReceiverErrorTest, ChunkAfterLastPoisonsACompleteTransfer) {
  Ok(0);
  Ok(1);
  Ok(2);
  ASSERT_TRUE(rx_.complete());
  KvChunkHeader h = t_.chunks[2].header;
  h.seq_no = 3;
  ExpectRejected(MakeChunk(t_, h), absl::StatusCode::kFailedPrecondition,
                 "seq 3 of request r-0001: arrived after the last chunk (seq 2)");
}

TEST_F(ReceiverErrorTest, InvalidSpecPoisonsFromTheStart) {
  TransferSpec spec = t_.spec;
  spec.num_blocks = 71;  // more blocks than tokens
  KvTransferReceiver rx(spec);
  const absl::Status s = Deliver(&rx, t_.chunks[0]);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("invalid transfer spec for request r-0001"));
  spec = t_.spec;
  spec.expected_payload_bytes = nullptr;
  const KvTransferReceiver no_fn(spec);
  EXPECT_THAT(no_fn.status().message(), HasSubstr("no expected_payload_bytes function"));
}

TEST_F(ReceiverErrorTest, ChecksumIsCheckedBeforeEverythingElse) {
  KvChunkHeader h = t_.chunks[2].header;  // a gap, wrong ids and a bad range at once
  h.request_id = "x";
  h.block_end = 99;
  Chunk c = MakeChunk(t_, h);
  c.checksum ^= 1;
  ExpectRejected(c, absl::StatusCode::kDataLoss, "checksum mismatch");
}

// ---- Receiver: randomized delivery ---------------------------------------------------------

// Mutates a valid chunk sequence the ways a network or a buggy sender could (reorder, drop,
// duplicate, corrupt bytes or header fields without fixing the checksum, truncate), delivers
// it, and checks that the receiver completes exactly when the delivered sequence is the valid
// one, and that after the first rejection every chunk is rejected with that same status.
TEST(KvTransferReceiverRandomTest, CompletesOnlyForTheExactValidSequence) {
  std::mt19937 rng(20240611);
  int completed = 0;
  int rejected = 0;
  for (int iter = 0; iter < 400; ++iter) {
    const int32_t layers = 1 + static_cast<int32_t>(rng() % 4);
    const int64_t tokens = 1 + static_cast<int64_t>(rng() % 80);
    const int64_t budget = 32 + static_cast<int64_t>(rng() % 200);
    const Transfer t = MakeTransfer(layers, tokens, 16, 32, 8 + rng() % 25, budget, &rng);
    ASSERT_FALSE(t.chunks.empty());
    std::vector<Chunk> sent = t.chunks;
    const int mutations = static_cast<int>(rng() % 4);  // 0: deliver as planned
    for (int m = 0; m < mutations; ++m) {
      const size_t i = rng() % sent.size();
      switch (rng() % 7) {
        case 0:  // reorder
          std::swap(sent[i], sent[rng() % sent.size()]);
          break;
        case 1:  // drop
          if (sent.size() > 1) sent.erase(sent.begin() + static_cast<ptrdiff_t>(i));
          break;
        case 2:  // duplicate (possibly far later)
          sent.insert(sent.begin() + static_cast<ptrdiff_t>(rng() % (sent.size() + 1)), sent[i]);
          break;
        case 3:  // flip a payload bit
          if (!sent[i].payload.empty()) {
            sent[i].payload[rng() % sent[i].payload.size()] ^=
                static_cast<uint8_t>(1u << (rng() % 8));
          }
          break;
        case 4:  // flip a header field, keep the checksum
          switch (rng() % 5) {
            case 0:
              sent[i].header.seq_no += 1;
              break;
            case 1:
              sent[i].header.block_begin ^= 1;
              break;
            case 2:
              sent[i].header.layer_end += 1;
              break;
            case 3:
              sent[i].header.last = !sent[i].header.last;
              break;
            default:
              sent[i].header.first_token += 1;
              break;
          }
          break;
        case 5:  // truncate the payload
          if (!sent[i].payload.empty()) sent[i].payload.pop_back();
          break;
        default:  // a wrong checksum
          sent[i].checksum += 1;
          break;
      }
    }
    KvTransferReceiver rx(t.spec);
    absl::Status first_error;
    for (const Chunk& c : sent) {
      const absl::Status s = Deliver(&rx, c);
      if (!first_error.ok()) {
        EXPECT_EQ(s, first_error);
      } else if (!s.ok()) {
        first_error = s;
      }
    }
    // A mutated sequence is rejected, or (a dropped tail) simply never completes.
    const bool exact = sent == t.chunks;
    EXPECT_EQ(rx.complete(), exact) << "iteration " << iter << ": " << rx.status();
    if (exact) {
      EXPECT_TRUE(first_error.ok()) << "iteration " << iter << ": " << first_error;
      ++completed;
      EXPECT_EQ(rx.cells_received(), rx.num_cells());
    } else {
      ++rejected;
    }
  }
  // Both outcomes were exercised many times.
  EXPECT_GT(completed, 50);
  EXPECT_GT(rejected, 150);
}

}  // namespace
}  // namespace duet::kv
