// Google Benchmark cases for the attention kernels on the default Vulkan device (DUET_VK_DEVICE
// picks another; --attn_reads=storage|texel forces a read path, AttnTiles::reads): chunked-prefill flash attention and split-K paged decode attention, for the F16
// and FP8 caches, at model-like head shapes.
//
// Counters (per second of wall time around Submit, which waits for the GPU):
//   kv_GB/s   bytes of cached K and V (in the cache dtype, FP8 scales included) plus pending K and
//             V (f32) that the step attends to, each counted once per sequence;
//   GFLOP/s   4 * num_heads * head_dim per (query, visible key) pair (QK^T and PV).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/kv/paged_kv.h"
#include "common/vk/command_list.h"
#include "common/vk/device.h"
#include "common/vk/ops_attention.h"
#include "common/vk/pipeline.h"

namespace duet::vk {
namespace {

struct BenchDevice {
  std::unique_ptr<Device> device;
  std::unique_ptr<Kernels> kernels;
};

// --attn_reads=storage|texel (default: the device's choice).
AttnReads g_reads = AttnReads::kDefault;

BenchDevice* GetDevice() {
  static BenchDevice* shared = [] {
    auto* d = new BenchDevice;
    absl::StatusOr<std::unique_ptr<Device>> created = Device::Create();
    if (created.ok()) {
      d->device = std::move(created).value();
      d->kernels = std::make_unique<Kernels>(d->device.get());
    }
    return d;
  }();
  return shared;
}

Buffer MustUpload(Device& device, const void* data, uint64_t bytes) {
  Buffer buffer = *device.CreateBuffer(bytes);
  if (!device.Upload(buffer.view(), data).ok()) std::abort();
  return buffer;
}

template <typename T>
Buffer MustUpload(Device& device, const std::vector<T>& v) {
  return MustUpload(device, v.data(), v.size() * sizeof(T));
}

// A batch of `num_seqs` sequences, each with `cached` committed positions and `num_new` pending.
struct Workload {
  int64_t num_heads, num_kv_heads, head_dim;
  kv::CacheDtype dtype;
  int64_t num_seqs, cached, num_new;
  bool decode;
};

void RunAttention(benchmark::State& state, const Workload& w) {
  BenchDevice* bench = GetDevice();
  if (bench->device == nullptr) {
    state.SkipWithError("no Vulkan device");
    return;
  }
  Device& device = *bench->device;
  kv::KvLayout layout;
  layout.num_layers = 1;
  layout.num_kv_heads = w.num_kv_heads;
  layout.head_dim = w.head_dim;
  layout.dtype = w.dtype;
  const int64_t blocks_per_seq = (w.cached + w.num_new + 15) / 16;
  layout.num_blocks = blocks_per_seq * w.num_seqs;
  layout.num_tail_slots = w.dtype == kv::CacheDtype::kFp8E4M3 ? w.num_seqs : 0;

  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint8_t> data(static_cast<size_t>(layout.layer_data_bytes()));
  for (uint8_t& b : data) b = static_cast<uint8_t>(rng() & 0x3F);  // finite in every dtype
  std::vector<float> scales(static_cast<size_t>(layout.num_blocks * w.num_kv_heads), 0.01f);
  std::vector<uint16_t> tail(static_cast<size_t>(std::max<int64_t>(1, layout.tail_bytes() / 2)),
                             0x3C00);
  Buffer k_data = MustUpload(device, data);
  Buffer v_data = MustUpload(device, data);
  Buffer k_scales = MustUpload(device, scales);
  Buffer v_scales = MustUpload(device, scales);
  Buffer tail_buf = MustUpload(device, tail);

  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(w.num_seqs));
  std::vector<AttnSequence> seqs;
  for (int64_t s = 0; s < w.num_seqs; ++s) {
    tables[static_cast<size_t>(s)].resize(static_cast<size_t>(blocks_per_seq));
    std::iota(tables[static_cast<size_t>(s)].begin(), tables[static_cast<size_t>(s)].end(),
              static_cast<int32_t>(s * blocks_per_seq));
    seqs.push_back({s * w.num_new, w.num_new, w.cached, static_cast<int32_t>(s),
                    tables[static_cast<size_t>(s)]});
  }
  const int64_t rows = w.num_seqs * w.num_new;
  std::vector<float> q(static_cast<size_t>(rows * w.num_heads * w.head_dim));
  std::vector<float> kv(static_cast<size_t>(rows * w.num_kv_heads * w.head_dim));
  for (float& x : q) x = normal(rng);
  for (float& x : kv) x = normal(rng);
  Buffer q_buf = MustUpload(device, q);
  Buffer k_new = MustUpload(device, kv);
  Buffer v_new = MustUpload(device, kv);
  Buffer table = MustUpload(device, EncodeSequenceTable(seqs));
  Buffer out = *device.CreateBuffer(q.size() * 4);
  KvLayerViews views{k_data.view(), v_data.view(), {}, {}, {}};
  if (w.dtype == kv::CacheDtype::kFp8E4M3) {
    views.k_scales = k_scales.view();
    views.v_scales = v_scales.view();
    views.tail = tail_buf.view();
  }
  const AttnStep step{layout, 0, views, seqs, table.view(), k_new.view(), v_new.view()};
  DecodeOptions options;
  options.tiles.reads = g_reads;
  Buffer scratch;
  if (w.decode)
    scratch = *device.CreateBuffer(PagedAttnDecodeScratchBytes(step, w.num_heads, options));
  std::unique_ptr<CommandList> cl = *CommandList::Create(&device);

  const auto record = [&]() {
    return w.decode ? RecordPagedAttnDecode(*cl, *bench->kernels, step, w.num_heads, q_buf.view(),
                                            scratch.view(), out.view(), options)
                    : RecordFlashAttnPrefill(*cl, *bench->kernels, step, w.num_heads, q_buf.view(),
                                             out.view(), options.tiles);
  };
  if (!record().ok() || !cl->Submit().ok()) {  // warm-up: creates the pipelines
    state.SkipWithError("dispatch failed");
    return;
  }
  for (auto _ : state) {
    if (!record().ok()) std::abort();
    const auto start = std::chrono::steady_clock::now();
    if (!cl->Submit().ok()) std::abort();
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  // Work per step.
  double pairs = 0;
  for (int64_t i = 0; i < w.num_new; ++i) pairs += static_cast<double>(w.cached + i + 1);
  pairs *= static_cast<double>(w.num_seqs);
  const double flops = 4.0 * static_cast<double>(w.num_heads * w.head_dim) * pairs;
  const double per_position =
      2.0 * static_cast<double>(w.num_kv_heads) *
      (static_cast<double>(layout.tile_data_bytes() + layout.tile_scale_bytes()) / 16.0);
  const double kv_bytes = static_cast<double>(w.num_seqs) *
                          (static_cast<double>(w.cached) * per_position +
                           static_cast<double>(w.num_new * 2 * w.num_kv_heads * w.head_dim * 4));
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["kv_GB/s"] =
      benchmark::Counter(kv_bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// SmolLM2-135M attention: 9 query heads over 3 KV heads of 64.
void BM_FlashAttnPrefill(benchmark::State& state) {
  const auto dtype = static_cast<kv::CacheDtype>(state.range(0));
  RunAttention(state, {9, 3, 64, dtype, 1, state.range(1), state.range(2), false});
}
BENCHMARK(BM_FlashAttnPrefill)
    ->ArgNames({"dtype", "cached", "chunk"})
    ->Args({static_cast<int>(kv::CacheDtype::kF16), 0, 512})
    ->Args({static_cast<int>(kv::CacheDtype::kFp8E4M3), 0, 512})
    ->Args({static_cast<int>(kv::CacheDtype::kFp8E4M3), 1024, 256})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

void BM_PagedAttnDecode(benchmark::State& state) {
  const auto dtype = static_cast<kv::CacheDtype>(state.range(0));
  RunAttention(state, {9, 3, 64, dtype, state.range(1), state.range(2), 1, true});
}
BENCHMARK(BM_PagedAttnDecode)
    ->ArgNames({"dtype", "seqs", "context"})
    ->Args({static_cast<int>(kv::CacheDtype::kF16), 8, 1024})
    ->Args({static_cast<int>(kv::CacheDtype::kF16), 1, 256})
    ->Args({static_cast<int>(kv::CacheDtype::kFp8E4M3), 8, 1024})
    ->Args({static_cast<int>(kv::CacheDtype::kFp8E4M3), 1, 4096})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// TinyLlama-1.1B attention (32 / 4 heads of 64, GQA 8), decode with speculative verification
// (5 queries per sequence).
void BM_PagedAttnVerify(benchmark::State& state) {
  RunAttention(state,
               {32, 4, 64, kv::CacheDtype::kFp8E4M3, state.range(0), state.range(1), 5, true});
}
BENCHMARK(BM_PagedAttnVerify)
    ->ArgNames({"seqs", "context"})
    ->Args({4, 1024})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// stories260K attention (8 / 4 heads of 8): small heads, decode (1 query) and speculative
// verification (2 to 5 queries: k = 1..4 drafted tokens) of one sequence, where per-key and
// per-dispatch costs dominate. On CPU devices 5 queries take two rows per invocation.
void BM_PagedAttnSmallHeads(benchmark::State& state) {
  RunAttention(state, {8, 4, 8, kv::CacheDtype::kFp8E4M3, 1, state.range(0), state.range(1), true});
}
BENCHMARK(BM_PagedAttnSmallHeads)
    ->ArgNames({"context", "new"})
    ->ArgsProduct({{128}, {1, 2, 4, 5}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace duet::vk

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--attn_reads=storage") {
      duet::vk::g_reads = duet::vk::AttnReads::kStorage;
    } else if (arg == "--attn_reads=texel") {
      duet::vk::g_reads = duet::vk::AttnReads::kTexel;
    } else {
      std::fprintf(stderr, "unknown argument: %s (flags: --attn_reads=storage|texel)\n", argv[i]);
      return 2;
    }
  }
  benchmark::AddCustomContext(
      "attn_reads", duet::vk::g_reads == duet::vk::AttnReads::kDefault
                        ? "default"
                        : (duet::vk::g_reads == duet::vk::AttnReads::kTexel ? "texel" : "storage"));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
