// The paged-KV and attention kernels (kv_seal, kv_write, flash_attn_prefill, paged_attn_decode +
// reduce) against common/kv's CPU store and reference attention.
//
// Every case builds a CPU cache with random committed history, uploads its bytes, then runs one
// step (seal, attention, commit) on both sides over a ragged batch, with fresh seeded inputs and
// outputs poisoned with NaN. Checks:
//   - cache bytes after the step (FP8 codes and scales, f16/f32 data, the f16 tail): identical.
//     The kernels round to f16 and E4M3 with the same integer rules as the CPU.
//   - attention outputs: atol 1e-4 + rtol 1e-4, the same for every dtype: both sides read
//     bit-identical dequantized K/V, so only the arithmetic differs (f32 tiles with exp() vs
//     double). Quantization error itself is bounded in tests/kv (Fp8AttentionStaysCloseToF32).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/kv/paged_kv.h"
#include "common/vk/ops_attention.h"
#include "tests/vk/vk_test_util.h"

namespace duet::vk {
namespace {

using kv::CacheDtype;
using kv::KvLayout;
using kv::KvPart;
using kv::PagedKvCache;
using testing::AllClose;
using testing::Download;
using testing::PoisonedBuffer;
using testing::Upload;

constexpr int64_t kLayer = 1;  // of 2: exercises the tail's layer addressing
constexpr float kTol = 1e-4f;

enum class Kernel { kPrefill, kDecode };

struct SeqShape {
  int64_t num_cached;
  int64_t num_new;
};

struct AttnCase {
  CacheDtype dtype;
  int64_t head_dim;
  int64_t num_kv_heads;
  int64_t group;  // num_heads / num_kv_heads
  Kernel kernel;
  std::vector<SeqShape> seqs;
  AttnTiles tiles = {};
  uint32_t part_size = 64;  // decode
  int64_t accepted = -1;    // commit this many per sequence (-1: all)
};

std::vector<float> Normal(std::mt19937& rng, int64_t n, float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// A CPU store and its device mirror (one layer's K/V data and scales, the whole tail).
class AttentionTest : public testing::VkTest {
 protected:
  void Build(const AttnCase& c) {
    layout_.num_layers = 2;
    layout_.num_kv_heads = c.num_kv_heads;
    layout_.head_dim = c.head_dim;
    layout_.block_size = 16;
    layout_.dtype = c.dtype;
    int64_t blocks = 0;
    for (const SeqShape& s : c.seqs) blocks += (s.num_cached + s.num_new + 15) / 16;
    layout_.num_blocks = blocks + 3;
    layout_.num_tail_slots =
        c.dtype == CacheDtype::kFp8E4M3 ? static_cast<int64_t>(c.seqs.size()) + 1 : 0;
    cpu_ = std::make_unique<PagedKvCache>(*PagedKvCache::Create(layout_));
    // Block ids handed out in a shuffled order; tail slots in reverse.
    std::vector<int32_t> ids(static_cast<size_t>(layout_.num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    size_t next = 0;
    tables_.clear();
    for (size_t i = 0; i < c.seqs.size(); ++i) {
      const int64_t n = (c.seqs[i].num_cached + c.seqs[i].num_new + 15) / 16;
      tables_.emplace_back(ids.begin() + static_cast<int64_t>(next),
                           ids.begin() + static_cast<int64_t>(next) + n);
      next += static_cast<size_t>(n);
    }
    // Committed history, written through the CPU store (chunks of 7 to leave partial tails).
    const int64_t kv_dim = layout_.num_kv_heads * layout_.head_dim;
    for (size_t i = 0; i < c.seqs.size(); ++i) {
      for (int64_t done = 0; done < c.seqs[i].num_cached;) {
        const int64_t n = std::min<int64_t>(7, c.seqs[i].num_cached - done);
        const std::vector<float> k = Normal(rng_, n * kv_dim, 1.5f);
        const std::vector<float> v = Normal(rng_, n * kv_dim, 1.0f);
        const kv::SequenceView view{tables_[i], done, TailSlot(c, i)};
        ASSERT_TRUE(cpu_->SealCompleted(kLayer, view, k.data(), v.data(), n).ok());
        ASSERT_TRUE(cpu_->Commit(kLayer, view, k.data(), v.data(), n).ok());
        done += n;
      }
    }
    UploadCache();
  }

  int32_t TailSlot(const AttnCase& c, size_t i) const {
    return c.dtype == CacheDtype::kFp8E4M3 ? static_cast<int32_t>(c.seqs.size() - i) : -1;
  }

  void UploadCache() {
    const auto bytes = [](absl::Span<const uint8_t> s) {
      return std::vector<uint8_t>(s.begin(), s.end());
    };
    k_data_ = Upload(device(), bytes(cpu_->data(kLayer, KvPart::kK)));
    v_data_ = Upload(device(), bytes(cpu_->data(kLayer, KvPart::kV)));
    if (layout_.dtype == CacheDtype::kFp8E4M3) {
      const auto floats = [](absl::Span<const float> s) {
        return std::vector<float>(s.begin(), s.end());
      };
      k_scales_ = Upload(device(), floats(cpu_->scales(kLayer, KvPart::kK)));
      v_scales_ = Upload(device(), floats(cpu_->scales(kLayer, KvPart::kV)));
      tail_ = Upload(device(), std::vector<uint16_t>(cpu_->tail().begin(), cpu_->tail().end()));
    }
  }

  KvLayerViews Views() const {
    KvLayerViews v{k_data_.view(), v_data_.view(), {}, {}, {}};
    if (layout_.dtype == CacheDtype::kFp8E4M3) {
      v.k_scales = k_scales_.view();
      v.v_scales = v_scales_.view();
      v.tail = tail_.view();
    }
    return v;
  }

  // The device cache equals the CPU cache byte for byte.
  void ExpectSameCache(const char* when) {
    const auto k = Download<uint8_t>(device(), k_data_.view());
    const auto v = Download<uint8_t>(device(), v_data_.view());
    const auto ck = cpu_->data(kLayer, KvPart::kK);
    const auto cv = cpu_->data(kLayer, KvPart::kV);
    EXPECT_TRUE(std::equal(k.begin(), k.end(), ck.begin(), ck.end())) << when << ": K data";
    EXPECT_TRUE(std::equal(v.begin(), v.end(), cv.begin(), cv.end())) << when << ": V data";
    if (layout_.dtype == CacheDtype::kFp8E4M3) {
      const auto ks = Download<float>(device(), k_scales_.view());
      const auto vs = Download<float>(device(), v_scales_.view());
      const auto cks = cpu_->scales(kLayer, KvPart::kK);
      const auto cvs = cpu_->scales(kLayer, KvPart::kV);
      EXPECT_TRUE(std::equal(ks.begin(), ks.end(), cks.begin(), cks.end())) << when << ": K scales";
      EXPECT_TRUE(std::equal(vs.begin(), vs.end(), cvs.begin(), cvs.end())) << when << ": V scales";
      const auto t = Download<uint16_t>(device(), tail_.view());
      EXPECT_TRUE(std::equal(t.begin(), t.end(), cpu_->tail().begin(), cpu_->tail().end()))
          << when << ": tail";
    }
  }

  // One step: seal, attention, commit on both sides; compares outputs and caches.
  void RunStep(const AttnCase& c) {
    const int64_t num_heads = c.num_kv_heads * c.group;
    const int64_t kv_dim = layout_.num_kv_heads * layout_.head_dim;
    const int64_t q_dim = num_heads * layout_.head_dim;
    // Sequences with a one-row gap between them (rows of nobody stay NaN in `out`).
    std::vector<AttnSequence> seqs;
    int64_t rows = 0;
    for (size_t i = 0; i < c.seqs.size(); ++i) {
      seqs.push_back({rows, c.seqs[i].num_new, c.seqs[i].num_cached, TailSlot(c, i), tables_[i]});
      rows += c.seqs[i].num_new + 1;
    }
    const std::vector<float> q = Normal(rng_, rows * q_dim, 1.0f);
    const std::vector<float> k = Normal(rng_, rows * kv_dim, 1.5f);
    const std::vector<float> v = Normal(rng_, rows * kv_dim, 1.0f);
    Buffer q_buf = Upload(device(), q);
    Buffer k_buf = Upload(device(), k);
    Buffer v_buf = Upload(device(), v);
    Buffer table = Upload(device(), EncodeSequenceTable(seqs));
    Buffer out = PoisonedBuffer(device(), static_cast<uint64_t>(rows * q_dim) * 4);
    AttnStep step{layout_, kLayer, Views(), seqs, table.view(), k_buf.view(), v_buf.view()};

    ASSERT_TRUE(RecordKvSeal(cl(), kernels(), step).ok());
    Buffer scratch;
    if (c.kernel == Kernel::kPrefill) {
      const absl::Status s = RecordFlashAttnPrefill(cl(), kernels(), step, num_heads, q_buf.view(),
                                                    out.view(), c.tiles);
      ASSERT_TRUE(s.ok()) << s;
    } else {
      const DecodeOptions options{c.part_size, c.tiles};
      scratch = PoisonedBuffer(device(), PagedAttnDecodeScratchBytes(step, num_heads, options));
      const absl::Status s = RecordPagedAttnDecode(cl(), kernels(), step, num_heads, q_buf.view(),
                                                   scratch.view(), out.view(), options);
      ASSERT_TRUE(s.ok()) << s;
    }
    // Commit (possibly fewer than were pending: speculative rollback).
    std::vector<AttnSequence> commit = seqs;
    for (AttnSequence& s : commit) {
      if (c.accepted >= 0) s.num_new = std::min(s.num_new, c.accepted);
    }
    Buffer commit_table = Upload(device(), EncodeSequenceTable(commit));
    AttnStep commit_step = step;
    commit_step.seqs = commit;
    commit_step.seq_table = commit_table.view();
    ASSERT_TRUE(RecordKvCommit(cl(), kernels(), commit_step).ok());
    const absl::Status submitted = cl().Submit();
    ASSERT_TRUE(submitted.ok()) << submitted;

    const std::vector<float> got = Download<float>(device(), out.view());
    for (size_t i = 0; i < seqs.size(); ++i) {
      const AttnSequence& s = seqs[i];
      const kv::SequenceView view{tables_[i], s.num_cached, s.tail_slot};
      const float* ks = k.data() + s.q_offset * kv_dim;
      const float* vs = v.data() + s.q_offset * kv_dim;
      ASSERT_TRUE(cpu_->SealCompleted(kLayer, view, ks, vs, s.num_new).ok());
      std::vector<float> want(static_cast<size_t>(s.num_new * q_dim));
      ASSERT_TRUE(cpu_->Attention(kLayer, view, q.data() + s.q_offset * q_dim, num_heads, ks, vs,
                                  s.num_new, want.data())
                      .ok());
      ASSERT_TRUE(cpu_->Commit(kLayer, view, ks, vs, commit[i].num_new).ok());
      EXPECT_TRUE(AllClose(
          absl::MakeConstSpan(got).subspan(static_cast<size_t>(s.q_offset * q_dim), want.size()),
          want, kTol, kTol))
          << "sequence " << i << " (cached " << s.num_cached << ", new " << s.num_new << ")";
      // The gap row after the sequence is untouched.
      EXPECT_TRUE(std::isnan(got[static_cast<size_t>((s.q_offset + s.num_new) * q_dim)]));
    }
    ExpectSameCache("after the step");
  }

  std::mt19937 rng_{testing::TestSeed()};
  KvLayout layout_;
  std::unique_ptr<PagedKvCache> cpu_;
  std::vector<std::vector<int32_t>> tables_;
  Buffer k_data_, v_data_, k_scales_, v_scales_, tail_;
};

class AttentionCaseTest : public AttentionTest, public ::testing::WithParamInterface<AttnCase> {};

TEST_P(AttentionCaseTest, MatchesCpuReference) {
  Build(GetParam());
  ExpectSameCache("after upload");
  RunStep(GetParam());
}

std::string DtypeName(CacheDtype dtype) { return std::string(kv::CacheDtypeName(dtype)); }

std::vector<AttnCase> Cases() {
  std::vector<AttnCase> cases;
  for (CacheDtype dtype : {CacheDtype::kF32, CacheDtype::kF16, CacheDtype::kFp8E4M3}) {
    // Prefill: ragged fresh prompts (lengths around the block and tile sizes).
    cases.push_back(
        {dtype, 8, 2, 1, Kernel::kPrefill, {{0, 1}, {0, 15}, {0, 16}, {0, 17}, {0, 100}}});
    // Later chunks of prompts (earlier chunks in the pool and tail), head_dim 16, GQA 2.
    cases.push_back({dtype, 16, 2, 2, Kernel::kPrefill, {{37, 50}, {16, 16}, {5, 300}}});
    cases.push_back({dtype, 64, 2, 2, Kernel::kPrefill, {{0, 300}, {70, 33}}});
    cases.push_back({dtype, 128, 1, 4, Kernel::kPrefill, {{0, 17}, {21, 40}}});
    // Decode: one query per sequence, contexts from 1 to 1000 (split into 64-key partitions).
    cases.push_back(
        {dtype, 8, 2, 1, Kernel::kDecode, {{0, 1}, {14, 1}, {15, 1}, {16, 1}, {299, 1}, {999, 1}}});
    cases.push_back({dtype, 64, 2, 4, Kernel::kDecode, {{100, 1}, {16, 1}, {300, 1}}});
    cases.push_back({dtype, 128, 2, 2, Kernel::kDecode, {{0, 1}, {47, 1}, {128, 1}}});
    // Speculative verification: k + 1 = 5 queries crossing block boundaries; 2 accepted.
    AttnCase verify{dtype, 16, 2, 2, Kernel::kDecode, {{14, 5}, {30, 5}, {0, 5}, {200, 5}}};
    verify.accepted = 2;
    cases.push_back(verify);
    AttnCase verify64{dtype, 64, 1, 4, Kernel::kDecode, {{12, 8}, {60, 8}}};
    verify64.accepted = 6;
    verify64.part_size = 32;
    cases.push_back(verify64);
    // stories260K's heads (8 elements, GQA 2): a key's K or V fits in part of one texel.
    AttnCase verify8{dtype, 8, 4, 2, Kernel::kDecode, {{14, 5}, {126, 5}, {0, 3}}};
    verify8.accepted = 3;
    cases.push_back(verify8);
    // SmolLM2-135M's heads: GQA 3 (not a power of two).
    cases.push_back({dtype, 64, 3, 3, Kernel::kPrefill, {{0, 70}, {33, 20}}});
    cases.push_back({dtype, 64, 3, 3, Kernel::kDecode, {{70, 1}, {300, 1}}});
  }
  // Tile variants: several lanes per row (the GPU mapping), spare invocations, small and large
  // key tiles, one query position per tile.
  cases.push_back({CacheDtype::kFp8E4M3, 8, 1, 2, Kernel::kPrefill, {{3, 61}}, {64, 16, 8, 2}});
  cases.push_back({CacheDtype::kF16, 64, 2, 1, Kernel::kPrefill, {{9, 40}}, {64, 4, 32, 8}});
  cases.push_back({CacheDtype::kF32, 16, 1, 4, Kernel::kPrefill, {{0, 45}}, {40, 1, 64, 4}});
  cases.push_back({CacheDtype::kFp8E4M3, 128, 1, 2, Kernel::kPrefill, {{20, 30}}, {64, 4, 16, 8}});
  cases.push_back({CacheDtype::kFp8E4M3, 8, 1, 1, Kernel::kDecode, {{50, 3}}, {8, 4, 64, 2}, 64});
  // Every case through both read paths: storage buffers with shared-memory staging (GPUs) and
  // texel buffers read key by key (CPU devices), whatever this device would pick.
  std::vector<AttnCase> both;
  for (AttnReads reads : {AttnReads::kStorage, AttnReads::kTexel}) {
    for (AttnCase c : cases) {
      c.tiles.reads = reads;
      both.push_back(c);
    }
  }
  // Several rows per invocation (texel reads only): odd and full slot counts, spare slots in the
  // last invocations, with one and two lanes per row, decode and prefill.
  const auto texel = [](uint32_t lanes_per_row, uint32_t rows_per_lane) {
    return AttnTiles{0, 0, 0, lanes_per_row, rows_per_lane, AttnReads::kTexel};
  };
  AttnCase rows3{CacheDtype::kFp8E4M3, 8, 4, 2, Kernel::kDecode, {{14, 5}, {126, 5}, {0, 3}},
                 texel(0, 3)};
  rows3.accepted = 3;
  both.push_back(rows3);
  AttnCase rows4{CacheDtype::kF16, 16, 2, 2, Kernel::kDecode, {{14, 5}, {30, 5}, {200, 5}},
                 texel(0, 4)};
  rows4.accepted = 2;
  both.push_back(rows4);
  both.push_back(
      {CacheDtype::kFp8E4M3, 16, 2, 2, Kernel::kDecode, {{30, 5}, {3, 2}}, texel(2, 2)});
  both.push_back({CacheDtype::kF32, 16, 1, 4, Kernel::kPrefill, {{0, 45}, {7, 20}}, texel(0, 2)});
  return both;
}

std::string CaseName(const ::testing::TestParamInfo<AttnCase>& info) {
  const AttnCase& c = info.param;
  return absl::StrCat(info.index, "_", c.kernel == Kernel::kPrefill ? "prefill" : "decode", "_",
                      DtypeName(c.dtype), "_d", c.head_dim, "_g", c.group,
                      c.tiles.reads == AttnReads::kTexel ? "_texel" : "_storage",
                      c.tiles.rows_per_lane > 1 ? absl::StrCat("_rows", c.tiles.rows_per_lane)
                                                : "");
}

INSTANTIATE_TEST_SUITE_P(Kernels, AttentionCaseTest, ::testing::ValuesIn(Cases()), CaseName);

// Prefill results and cache bytes do not depend on how a prompt is chunked: tiles are aligned to
// absolute positions and a block's FP8 scale depends on its own tokens only.
TEST_F(AttentionTest, ChunkingDoesNotChangeBits) {
  for (const auto& [dtype, reads] :
       {std::pair{CacheDtype::kF16, AttnReads::kStorage}, std::pair{CacheDtype::kF16, AttnReads::kTexel},
        std::pair{CacheDtype::kFp8E4M3, AttnReads::kStorage},
        std::pair{CacheDtype::kFp8E4M3, AttnReads::kTexel}}) {
    AttnTiles tiles;
    tiles.reads = reads;
    const int64_t length = 70;
    AttnCase c{dtype, 16, 2, 2, Kernel::kPrefill, {{0, length}}};
    std::vector<std::vector<float>> outputs;
    std::vector<std::vector<uint8_t>> caches;
    const std::vector<float> q = Normal(rng_, length * 4 * 16, 1.0f);
    const std::vector<float> k = Normal(rng_, length * 2 * 16, 1.5f);
    const std::vector<float> v = Normal(rng_, length * 2 * 16, 1.0f);
    for (const std::vector<int64_t>& chunks :
         std::vector<std::vector<int64_t>>{{70}, {5, 16, 30, 19}, {33, 37}}) {
      rng_.seed(7);  // the same block table every time
      Build(c);
      Buffer q_buf = Upload(device(), q);
      Buffer k_buf = Upload(device(), k);
      Buffer v_buf = Upload(device(), v);
      Buffer out = PoisonedBuffer(device(), q.size() * 4);
      int64_t done = 0;
      std::vector<Buffer> tables;
      for (int64_t n : chunks) {
        const std::vector<AttnSequence> seqs = {{done, n, done, 1, tables_[0]}};
        tables.push_back(Upload(device(), EncodeSequenceTable(seqs)));
        // Rows of the chunk start at q_offset = done (so the views are the full tensors).
        const AttnStep step{layout_,      kLayer,      Views(), seqs, tables.back().view(),
                            k_buf.view(), v_buf.view()};
        ASSERT_TRUE(RecordKvSeal(cl(), kernels(), step).ok());
        ASSERT_TRUE(
            RecordFlashAttnPrefill(cl(), kernels(), step, 4, q_buf.view(), out.view(), tiles).ok());
        ASSERT_TRUE(RecordKvCommit(cl(), kernels(), step).ok());
        done += n;
      }
      ASSERT_TRUE(cl().Submit().ok());
      outputs.push_back(Download<float>(device(), out.view()));
      std::vector<uint8_t> bytes = Download<uint8_t>(device(), k_data_.view());
      if (dtype == CacheDtype::kFp8E4M3) {
        const auto scales = Download<uint8_t>(device(), k_scales_.view());
        bytes.insert(bytes.end(), scales.begin(), scales.end());
      }
      caches.push_back(bytes);
    }
    for (size_t i = 1; i < outputs.size(); ++i) {
      EXPECT_EQ(outputs[0], outputs[i]) << DtypeName(dtype) << " chunking " << i << " reads "
                                        << static_cast<int>(reads);
      EXPECT_EQ(caches[0], caches[i]) << DtypeName(dtype) << " chunking " << i;
    }
  }
}

// CPU devices read through texel buffers unless told otherwise; GPUs stage through shared memory.
TEST_F(AttentionTest, DefaultReadsFollowTheDevice) {
  Build({CacheDtype::kFp8E4M3, 64, 3, 3, Kernel::kDecode, {{20, 1}}});
  const bool cpu = device().info().type == DeviceType::kCpu;
  for (bool decode : {false, true}) {
    const absl::StatusOr<AttnTiles> tiles = ResolveAttnTiles(device(), layout_, 9, decode, 1, {});
    ASSERT_TRUE(tiles.ok()) << tiles.status();
    EXPECT_EQ(tiles->reads, cpu ? AttnReads::kTexel : AttnReads::kStorage);
    AttnTiles storage;
    storage.reads = AttnReads::kStorage;
    EXPECT_EQ(ResolveAttnTiles(device(), layout_, 9, decode, 1, storage)->reads,
              AttnReads::kStorage);
  }
}

// Texel reads take the one-block straight-line path only for key tiles inside a pool block, so
// the default key tile of small heads (32 keys for head_dim <= 32) shrinks to the block size;
// staged reads keep it.
TEST_F(AttentionTest, TexelKeyTilesLieInOneBlock) {
  for (CacheDtype dtype : {CacheDtype::kF16, CacheDtype::kFp8E4M3}) {
    Build({dtype, 8, 4, 2, Kernel::kDecode, {{20, 1}}});
    for (bool decode : {false, true}) {
      AttnTiles texel;
      texel.reads = AttnReads::kTexel;
      const absl::StatusOr<AttnTiles> t = ResolveAttnTiles(device(), layout_, 8, decode, 5, texel);
      ASSERT_TRUE(t.ok()) << t.status();
      EXPECT_EQ(t->keys, layout_.block_size) << DtypeName(dtype) << " decode " << decode;
      AttnTiles storage;
      storage.reads = AttnReads::kStorage;
      EXPECT_EQ(ResolveAttnTiles(device(), layout_, 8, decode, 5, storage)->keys, 32u);
    }
  }
}

// CPU devices give each invocation several rows when a texel decode tile of small heads has more
// rows than the SIMD width (stories260K's verify: 5 positions x GQA 2); storage reads and GPUs
// keep one row per invocation, and bad row counts are rejected.
TEST_F(AttentionTest, RowsPerLaneFollowTheTile) {
  Build({CacheDtype::kFp8E4M3, 8, 4, 2, Kernel::kDecode, {{20, 5}}});
  const bool cpu = device().info().type == DeviceType::kCpu;
  const absl::StatusOr<AttnTiles> verify = ResolveAttnTiles(device(), layout_, 8, true, 5, {});
  ASSERT_TRUE(verify.ok()) << verify.status();
  if (cpu && device().limits().subgroup_size == 8) {
    EXPECT_EQ(verify->rows_per_lane, 2u);
  } else if (!cpu) {
    EXPECT_EQ(verify->rows_per_lane, 1u);
  }
  EXPECT_GE(int64_t{verify->workgroup} * verify->rows_per_lane,
            int64_t{verify->q_pos} * 2 * verify->lanes_per_row);
  EXPECT_EQ(ResolveAttnTiles(device(), layout_, 8, true, 1, {})->rows_per_lane, 1u)
      << "one query position fits the SIMD width";
  AttnTiles storage;
  storage.reads = AttnReads::kStorage;
  EXPECT_EQ(ResolveAttnTiles(device(), layout_, 8, true, 5, storage)->rows_per_lane, 1u);
  storage.rows_per_lane = 2;
  const absl::StatusOr<AttnTiles> bad = ResolveAttnTiles(device(), layout_, 8, true, 5, storage);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("rows_per_lane"), std::string::npos) << bad.status();
  AttnTiles five{0, 0, 0, 0, 5, AttnReads::kTexel};
  EXPECT_FALSE(ResolveAttnTiles(device(), layout_, 8, true, 5, five).ok());
}

TEST_F(AttentionTest, RejectsBadArguments) {
  AttnCase c{CacheDtype::kFp8E4M3, 16, 2, 2, Kernel::kPrefill, {{0, 20}}};
  Build(c);
  Buffer big = PoisonedBuffer(device(), 1 << 16);
  std::vector<int32_t> short_table = {tables_[0][0]};  // 16 positions, 20 needed
  std::vector<AttnSequence> seqs = {{0, 20, 0, 1, short_table}};
  Buffer table = Upload(device(), EncodeSequenceTable(seqs));
  AttnStep step{layout_, kLayer, Views(), seqs, table.view(), big.view(), big.view()};
  EXPECT_EQ(RecordKvSeal(cl(), kernels(), step).code(), absl::StatusCode::kInvalidArgument);
  seqs = {{0, 20, 0, 7, tables_[0]}};  // tail slot out of range
  step.seqs = seqs;
  EXPECT_EQ(RecordKvCommit(cl(), kernels(), step).code(), absl::StatusCode::kInvalidArgument);
  seqs = {{0, 20, 0, 1, tables_[0]}};
  step.seqs = seqs;
  EXPECT_EQ(RecordFlashAttnPrefill(cl(), kernels(), step, 3, big.view(), big.view()).code(),
            absl::StatusCode::kInvalidArgument);  // 3 heads over 2 KV heads
  step.k_new = big.view().Sub(0, 64);             // too small for 20 rows
  EXPECT_EQ(RecordFlashAttnPrefill(cl(), kernels(), step, 4, big.view(), big.view()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ResolveAttnTiles(device(), layout_, 4, false, 20, AttnTiles{64, 32, 16, 1}).ok())
      << "fp8 tiles must lie within a block";
  EXPECT_EQ(cl().num_recorded(), 0);
}

}  // namespace
}  // namespace duet::vk
