// duet_kernel_bench: Google Benchmark microbenchmarks of the matrix kernels (RecordMatMul) at
// SmolLM2-135M shapes, per weight type (and stories260K's F32 decode shapes at 1 and 5 vectors),
// with the streaming-read kernel as the bandwidth ceiling.
//
//   duet_kernel_bench [--benchmark_filter=REGEX] [--benchmark_repetitions=3]
//                     [--benchmark_format=json --benchmark_out=FILE]
//                     [--mv_wg=N --mv_k_lanes=N --mv_rows=N --mv_bcast=0|1 --mv_max_tokens=N]
//                     [--mm_tile=ROWSxTOKENS --mm_thread=ROWSxTOKENS --mm_shared=0|1]
//                     [--texel=0|1] [--aligned_rows=0|1]
//
// --aligned_rows: Q8_0 / Q4_0 rows padded to 16 bytes (WeightView::row_stride), as the Vulkan
// engine uploads them where the configuration says so (default: DefaultMatMulConfig's choice).
//
// Counters (per second of wall time, submission included):
//   bytes_per_second  weight bytes read (stream_read: buffer bytes read)
//   FLOP/s            2 * rows * cols * tokens
// Each iteration records the operation repeatedly (up to 32 MiB of weights or 200 MFLOP), then
// submits once and waits, so per-submission overhead is amortized. The --mv_* and
// --mm_* flags override DefaultMatMulConfig for tuning (docs/performance.md); the context block
// of the output names the device and the configuration used.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/ggml_types.h"
#include "common/model/quant.h"
#include "common/vk/buffer.h"
#include "common/vk/command_list.h"
#include "common/vk/device.h"
#include "common/vk/ops_matmul.h"
#include "common/vk/pipeline.h"

namespace duet::vk {
namespace {

// Work per submission: repeats of the operation up to 32 MiB of weights or 200 MFLOP.
constexpr uint64_t kTargetBytesPerSubmit = uint64_t{32} << 20;
constexpr double kTargetFlopsPerSubmit = 2e8;

struct StreamPush {  // shaders/stream_read.comp
  uint32_t num_vec4;
};
DUET_VK_PUSH_CONSTANTS(StreamPush);

struct Env {
  std::unique_ptr<Device> device;
  std::unique_ptr<Kernels> kernels;
  MatMulConfig config;
};

Env* g_env = nullptr;

void Fail(benchmark::State& state, const absl::Status& status) {
  state.SkipWithError(status.ToString().c_str());
}

// A weight of `type` with random contents (quantized blocks get small finite scales).
// row_stride: bytes between rows (0 = packed).
std::vector<uint8_t> RandomWeight(GgmlType type, int64_t rows, int64_t cols, uint32_t seed,
                                  int64_t row_stride) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> bytes(MatMulWeightBytes(type, rows, cols, row_stride), 0);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  const int64_t n = rows * cols;
  switch (type) {
    case GgmlType::kF32:
      for (int64_t i = 0; i < n; ++i) {
        const float v = value(rng);
        std::memcpy(bytes.data() + i * 4, &v, 4);
      }
      break;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(value(rng));
        std::memcpy(bytes.data() + i * 2, &h, 2);
      }
      break;
    default: {  // Q8_0 / Q4_0: random bytes, then a sane scale at the head of each block
      const int64_t block_bytes = TraitsOf(type).type_size;
      for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
        const uint32_t r = static_cast<uint32_t>(rng());
        std::memcpy(bytes.data() + i, &r, 4);
      }
      const int64_t stride = row_stride > 0 ? row_stride : GgmlRowBytes(type, cols);
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint16_t d = FloatToHalf(0.01f * value(rng));
        const int64_t row = b / (cols / 32);
        std::memcpy(bytes.data() + row * stride + (b % (cols / 32)) * block_bytes, &d, 2);
      }
    }
  }
  return bytes;
}

absl::StatusOr<Buffer> UploadBuffer(Device& device, const void* data, uint64_t bytes) {
  absl::StatusOr<Buffer> buffer = device.CreateBuffer(bytes);
  if (!buffer.ok()) return buffer.status();
  absl::Status status = device.Upload(buffer->view(), data);
  if (!status.ok()) return status;
  return buffer;
}

// Sums a 32 MiB buffer read as vec4s, through a storage buffer (stream_read_f32) or a uniform
// texel buffer (stream_read_texel_f32): the read-bandwidth reference of each path.
void BM_StreamRead(benchmark::State& state, KernelId kernel) {
  Device& device = *g_env->device;
  const uint64_t bytes = uint64_t{32} << 20;
  const uint32_t num_groups = 128;
  std::vector<float> ones(bytes / 4, 1.0f);
  absl::StatusOr<Buffer> in = UploadBuffer(device, ones.data(), bytes);
  absl::StatusOr<Buffer> out = device.CreateBuffer(num_groups * 4);
  if (!in.ok() || !out.ok()) return Fail(state, in.ok() ? out.status() : in.status());
  absl::StatusOr<const Pipeline*> pipeline = g_env->kernels->Get<StreamPush>(kernel);
  absl::StatusOr<std::unique_ptr<CommandList>> cl = CommandList::Create(&device);
  if (!pipeline.ok() || !cl.ok())
    return Fail(state, pipeline.ok() ? cl.status() : pipeline.status());
  for (auto _ : state) {
    absl::Status status =
        (*cl)->Dispatch(**pipeline, {in->view(), out->view()},
                        StreamPush{static_cast<uint32_t>(bytes / 16)}, Groups{num_groups});
    if (status.ok()) status = (*cl)->Submit();
    if (!status.ok()) return Fail(state, status);
  }
  state.counters["bytes_per_second"] =
      benchmark::Counter(static_cast<double>(bytes) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}

// One RecordMatMul of a `type` weight [rows (out), cols (in)] against `tokens` vectors.
void BM_MatMul(benchmark::State& state, GgmlType type, int64_t rows, int64_t cols, int64_t tokens) {
  Device& device = *g_env->device;
  const bool quantized = type == GgmlType::kQ8_0 || type == GgmlType::kQ4_0;
  const int64_t row_stride =
      g_env->config.aligned_quant_rows && quantized && GgmlRowBytes(type, cols) % 16 != 0
          ? AlignedRowStride(type, cols)
          : 0;
  const std::vector<uint8_t> w_bytes = RandomWeight(type, rows, cols, 1234, row_stride);
  std::vector<float> x(MatMulActivationBytes(tokens, cols, cols) / 4);
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (float& v : x) v = value(rng);
  absl::StatusOr<Buffer> w = UploadBuffer(device, w_bytes.data(), w_bytes.size());
  absl::StatusOr<Buffer> xb = UploadBuffer(device, x.data(), x.size() * 4);
  absl::StatusOr<Buffer> y = device.CreateBuffer(static_cast<uint64_t>(rows * tokens) * 4);
  if (!w.ok() || !xb.ok() || !y.ok()) {
    return Fail(state, !w.ok() ? w.status() : !xb.ok() ? xb.status() : y.status());
  }
  absl::StatusOr<std::unique_ptr<CommandList>> cl = CommandList::Create(&device);
  if (!cl.ok()) return Fail(state, cl.status());
  const WeightView wv{type, rows, cols, w->view(), row_stride};
  const uint64_t weight_bytes = static_cast<uint64_t>(rows * GgmlRowBytes(type, cols));
  const double flops =
      2.0 * static_cast<double>(rows) * static_cast<double>(cols) * static_cast<double>(tokens);
  const int64_t repeats =
      std::max<int64_t>(1, std::min(static_cast<int64_t>(kTargetBytesPerSubmit / weight_bytes),
                                    static_cast<int64_t>(kTargetFlopsPerSubmit / flops)));
  // Warm-up: the first dispatch compiles the pipeline (seconds on lavapipe).
  absl::Status status =
      RecordMatMul(**cl, *g_env->kernels, wv, xb->view(), y->view(), tokens, {}, &g_env->config);
  if (status.ok()) status = (*cl)->Submit();
  if (!status.ok()) return Fail(state, status);
  for (auto _ : state) {
    for (int64_t r = 0; r < repeats && status.ok(); ++r) {
      status = RecordMatMul(**cl, *g_env->kernels, wv, xb->view(), y->view(), tokens, {},
                            &g_env->config);
    }
    if (status.ok()) status = (*cl)->Submit();
    if (!status.ok()) return Fail(state, status);
  }
  const double ops = static_cast<double>(state.iterations() * repeats);
  state.counters["bytes_per_second"] =
      benchmark::Counter(static_cast<double>(weight_bytes) * ops, benchmark::Counter::kIsRate);
  state.counters["FLOP/s"] = benchmark::Counter(flops * ops, benchmark::Counter::kIsRate);
  state.counters["repeats"] = static_cast<double>(repeats);
  state.SetLabel(MatMulKernelName(g_env->config, tokens));
}

// SmolLM2-135M projections as {rows (out), cols (in)}: q/o (576x576), gate/up (1536x576),
// down (576x1536), and the tied output projection (49152x576).
constexpr int64_t kShapes[][2] = {{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
constexpr int64_t kSmallShapes[][2] = {{128, 64}, {344, 64}, {64, 172}, {512, 64}};
constexpr GgmlType kTypes[] = {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kF16, GgmlType::kF32};

void RegisterAll() {
  benchmark::RegisterBenchmark("stream_read/32MiB", BM_StreamRead, KernelId::kStreamReadF32)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("stream_read_texel/32MiB", BM_StreamRead,
                               KernelId::kStreamReadTexelF32)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (const char* kind : {"matvec", "matmul"}) {
    const bool decode = std::strcmp(kind, "matvec") == 0;
    for (GgmlType type : kTypes) {
      for (const auto& shape : kShapes) {
        for (int64_t tokens :
             decode ? std::vector<int64_t>{1, 8} : std::vector<int64_t>{128, 512}) {
          const std::string name = absl::StrCat(kind, "/", std::string(GgmlTypeName(type)), "/",
                                                shape[1], "x", shape[0], "/tokens:", tokens);
          benchmark::RegisterBenchmark(name.c_str(), BM_MatMul, type, shape[0], shape[1], tokens)
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
      }
    }
  }
  // stories260K's F32 decode matvecs (q | k | v, gate | up, down, output) for a plain decode
  // step (1 vector) and a speculative verify of 4 drafts (5 vectors).
  for (const auto& shape : kSmallShapes) {
    for (int64_t tokens : {1, 5}) {
      const std::string name =
          absl::StrCat("matvec/f32/", shape[1], "x", shape[0], "/tokens:", tokens);
      benchmark::RegisterBenchmark(name.c_str(), BM_MatMul, GgmlType::kF32, shape[0], shape[1],
                                   tokens)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
}

// Parses "--name=value" flags that override the launch configuration; returns false on an
// unknown flag.
bool ParseConfigFlags(int argc, char** argv, MatMulConfig* config) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      std::fprintf(stderr, "unknown argument: %s\n", argv[i]);
      return false;
    }
    const std::string key = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    const auto u32 = [&]() {
      return static_cast<uint32_t>(std::strtoul(value.c_str(), nullptr, 10));
    };
    const auto pair = [&](uint32_t* a, uint32_t* b) {
      return std::sscanf(value.c_str(), "%ux%u", a, b) == 2;
    };
    if (key == "mv_wg") {
      config->matvec_workgroup = u32();
    } else if (key == "mv_k_lanes") {
      config->matvec_k_lanes = u32();
    } else if (key == "mv_rows") {
      config->matvec_rows_per_lane = u32();
    } else if (key == "mv_bcast") {
      config->matvec_x_broadcast = u32() != 0;
    } else if (key == "mv_max_tokens") {
      config->matvec_max_tokens = u32();
    } else if (key == "mm_tile" && pair(&config->tile_rows, &config->tile_tokens)) {
    } else if (key == "mm_thread" && pair(&config->thread_rows, &config->thread_tokens)) {
    } else if (key == "texel") {
      config->texel_reads = u32() != 0;
    } else if (key == "aligned_rows") {
      config->aligned_quant_rows = u32() != 0;
    } else if (key == "mm_shared") {
      config->shared_tiles = u32() != 0;
    } else {
      std::fprintf(stderr, "unknown flag: %s\n", argv[i]);
      return false;
    }
  }
  return true;
}

std::string ConfigString(const MatMulConfig& c) {
  return absl::StrCat("matvec wg ", c.matvec_workgroup, " k_lanes ", c.matvec_k_lanes,
                      " rows/lane ", c.matvec_rows_per_lane, " x_broadcast ",
                      c.matvec_x_broadcast ? 1 : 0, " max_tokens ", c.matvec_max_tokens,
                      "; matmul tile ", c.tile_rows, "x", c.tile_tokens, " thread ", c.thread_rows,
                      "x", c.thread_tokens, " shared ", c.shared_tiles ? 1 : 0, "; texel ",
                      c.texel_reads ? 1 : 0, "; aligned quant rows ", c.aligned_quant_rows ? 1 : 0);
}

}  // namespace
}  // namespace duet::vk

int main(int argc, char** argv) {
  using namespace duet::vk;
  benchmark::Initialize(&argc, argv);
  absl::StatusOr<std::unique_ptr<Device>> device = Device::Create();
  if (!device.ok()) {
    std::fprintf(stderr, "duet_kernel_bench: %s\n", device.status().ToString().c_str());
    return 1;
  }
  Env env;
  env.device = std::move(device).value();
  env.kernels = std::make_unique<Kernels>(env.device.get());
  env.config = DefaultMatMulConfig(*env.device);
  if (!ParseConfigFlags(argc, argv, &env.config)) return 2;
  if (absl::Status status = ValidateMatMulConfig(*env.device, env.config); !status.ok()) {
    std::fprintf(stderr, "duet_kernel_bench: %s\n", status.ToString().c_str());
    return 2;
  }
  g_env = &env;
  benchmark::AddCustomContext("device", env.device->info().name);
  benchmark::AddCustomContext("device_type", std::string(DeviceTypeName(env.device->info().type)));
  benchmark::AddCustomContext("subgroup_size", std::to_string(env.device->limits().subgroup_size));
  benchmark::AddCustomContext("matmul_config", ConfigString(env.config));
  RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_env = nullptr;
  return 0;
}
