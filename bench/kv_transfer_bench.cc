// KV transfer throughput over loopback gRPC: a prefill node's KvSender pushing one request's KV
// (XXH3 checksums, payload copies into protobuf, HTTP/2 flow control) into a real DecodeNode,
// which verifies every chunk and imports it into its (CPU engine's) paged pool; then the
// reservation is released. Both ends run in this process but talk through a TCP socket on
// 127.0.0.1, as two processes on one host would.
//
// The model has SmolLM2-135M's KV geometry (30 layers, 3 KV heads of 64) with narrow matrices,
// so setting up the payload (one real prefill) is cheap. Arguments: prompt tokens, chunk payload
// budget in KiB, KV dtype (0 = FP8, 1 = F16). Counters: bytes_per_second (payload bytes over
// the time from the first chunk handed to gRPC to the decode node's acknowledgement), chunks,
// and bytes per prompt token.
//
//   build/release/bench/duet_kv_transfer_bench --benchmark_repetitions=3
#include <benchmark/benchmark.h>

#include <map>
#include <memory>
#include <tuple>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/base/status.h"
#include "common/engine/engine.h"
#include "common/kv/kv_payload.h"
#include "common/kv/kv_transfer.h"
#include "common/model/gguf.h"
#include "common/model/shapes.h"
#include "common/model/synthetic_model.h"
#include "common/model/tokenizer.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "decode_node/decode_node.h"
#include "prefill_node/kv_sender.h"

namespace duet {
namespace {

constexpr int64_t kBlocks = 256;  // 4096 positions of 16

std::shared_ptr<const GgufFile> KvGeometryModel() {
  static const std::shared_ptr<const GgufFile> file = [] {
    SyntheticModelOptions options;
    options.shape = *FindShape("smollm2-135m");
    options.shape.name = "kv-geometry-smollm2";
    // 3 heads of 64 as query heads too: hidden 192 keeps the prefill that makes the payload
    // cheap; the KV per token is the real model's.
    options.shape.num_heads = 3;
    options.shape.hidden_dim = 192;
    options.shape.ffn_dim = 64;
    options.shape.vocab_size = 260;
    options.shape.tied_embeddings = true;
    options.weight_type = GgmlType::kQ8_0;
    options.seed = 3;
    absl::StatusOr<GgufWriter> writer = BuildSyntheticModel(options);
    if (!writer.ok()) return std::shared_ptr<const GgufFile>();
    absl::StatusOr<std::vector<uint8_t>> bytes = writer->WriteToBuffer();
    if (!bytes.ok()) return std::shared_ptr<const GgufFile>();
    auto owned = std::make_shared<std::vector<uint8_t>>(std::move(*bytes));
    absl::StatusOr<std::unique_ptr<GgufFile>> parsed = GgufFile::Parse(*owned);
    if (!parsed.ok()) return std::shared_ptr<const GgufFile>();
    return std::shared_ptr<const GgufFile>(parsed->release(),
                                           [owned](const GgufFile* f) { delete f; });
  }();
  return file;
}

kv::CacheDtype DtypeArg(int64_t arg) {
  return arg == 0 ? kv::CacheDtype::kFp8E4M3 : kv::CacheDtype::kF16;
}

v1::KvDtype WireDtype(kv::CacheDtype dtype) {
  return dtype == kv::CacheDtype::kFp8E4M3 ? v1::KV_DTYPE_FP8_E4M3 : v1::KV_DTYPE_F16;
}

// One prompt's exported KV, cut into chunk rectangles.
struct Payload {
  std::vector<kv::ChunkRect> rects;
  std::vector<std::vector<uint8_t>> bytes;
  int64_t total_bytes = 0;
};

// One prompt's KV as the prefill node would export it: a real prefill on a CPU engine, cut by
// the transfer planner. Built once per (tokens, chunk budget, dtype): Google Benchmark calls a
// benchmark function several times.
absl::StatusOr<const Payload*> CachedPayload(int64_t num_tokens, int64_t chunk_bytes,
                                             kv::CacheDtype dtype,
                                             std::shared_ptr<const GgufFile> file) {
  static auto* cache = new std::map<std::tuple<int64_t, int64_t, kv::CacheDtype>, Payload>();
  const auto key = std::make_tuple(num_tokens, chunk_bytes, dtype);
  if (auto it = cache->find(key); it != cache->end()) return &it->second;
  EngineOptions options;
  options.kv_dtype = dtype;
  options.num_kv_blocks = kBlocks;
  options.max_sequences = 4;
  DUET_ASSIGN_OR_RETURN(std::unique_ptr<Engine> source, CreateEngine("cpu", file, options));
  const kv::KvLayout& layout = source->kv_layout();
  std::vector<int32_t> table;
  for (int32_t b = 0; b < static_cast<int32_t>(kv::NumBlocksFor(layout, num_tokens)); ++b) {
    table.push_back(b);
  }
  std::vector<int32_t> prompt(static_cast<size_t>(num_tokens));
  for (int64_t i = 0; i < num_tokens; ++i) prompt[static_cast<size_t>(i)] = 3 + (i * 7) % 250;
  DUET_RETURN_IF_ERROR(source->Prefill({table, 0, 0}, prompt).status());
  kv::PlannerOptions plan;
  plan.num_layers = static_cast<int32_t>(layout.num_layers);
  plan.num_tokens = num_tokens;
  plan.block_size = static_cast<int32_t>(layout.block_size);
  plan.max_chunk_payload_bytes = chunk_bytes;
  plan.payload_bytes = [layout, num_tokens](int32_t lb, int32_t le, int32_t bb, int32_t be) {
    return kv::KvPayloadBytes(layout, num_tokens, lb, le, bb, be);
  };
  DUET_ASSIGN_OR_RETURN(kv::KvTransferPlanner planner, kv::KvTransferPlanner::Create(plan));
  DUET_ASSIGN_OR_RETURN(std::vector<kv::ChunkRect> rects,
                        planner.OnLayersReady(static_cast<int32_t>(layout.num_layers)));
  Payload payload;
  payload.rects = rects;
  for (const kv::ChunkRect& r : rects) {
    DUET_ASSIGN_OR_RETURN(
        std::vector<uint8_t> bytes,
        source->ExportKv({table, num_tokens, 0}, num_tokens,
                         kv::KvRect{r.layer_begin, r.layer_end, r.block_begin, r.block_end}));
    payload.total_bytes += static_cast<int64_t>(bytes.size());
    payload.bytes.push_back(std::move(bytes));
  }
  return &cache->emplace(key, std::move(payload)).first->second;
}

void BM_KvTransfer(benchmark::State& state) {
  const int64_t num_tokens = state.range(0);
  const int64_t chunk_bytes = state.range(1) << 10;
  const kv::CacheDtype dtype = DtypeArg(state.range(2));
  std::shared_ptr<const GgufFile> file = KvGeometryModel();
  if (file == nullptr) return state.SkipWithError("cannot build the model");
  EngineOptions options;
  options.kv_dtype = dtype;
  options.num_kv_blocks = kBlocks;
  options.max_sequences = 4;
  absl::StatusOr<std::unique_ptr<Engine>> sink = CreateEngine("cpu", file, options);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(*file);
  if (!sink.ok() || !tokenizer.ok()) return state.SkipWithError("cannot create the engine");

  absl::StatusOr<const Payload*> payload = CachedPayload(num_tokens, chunk_bytes, dtype, file);
  if (!payload.ok()) return state.SkipWithError(payload.status().ToString().c_str());

  // The receiving decode node, served on loopback.
  decode::DecodeNodeOptions node_options;
  node_options.model_id = "kv-bench";
  node_options.max_num_seqs = 4;
  absl::StatusOr<std::unique_ptr<decode::DecodeNode>> node =
      decode::DecodeNode::Create(node_options, sink->get(), tokenizer->get());
  if (!node.ok()) return state.SkipWithError(std::string(node.status().message()).c_str());
  grpc::Service* services[] = {node->get()};
  absl::StatusOr<std::unique_ptr<rpc::RpcServer>> server =
      rpc::RpcServer::Start({.address = "127.0.0.1:0"}, services);
  if (!server.ok()) return state.SkipWithError("server");
  std::shared_ptr<grpc::Channel> channel = *rpc::CreateChannel((*server)->address());
  auto stub = v1::DecodeService::NewStub(channel);

  int64_t request = 0, bytes_sent = 0;
  double seconds = 0;
  for (auto _ : state) {
    const std::string request_id = absl::StrCat("bench-", request++);
    v1::ReserveRequest reserve;
    reserve.set_request_id(request_id);
    reserve.set_num_prompt_tokens(num_tokens);
    reserve.mutable_sampling()->set_temperature(0);
    reserve.mutable_sampling()->set_max_tokens(1);
    reserve.mutable_sampling()->set_seed(1);
    reserve.set_lease_ms(60000);
    v1::ReserveResponse reservation;
    {
      grpc::ClientContext context;
      const grpc::Status s = stub->Reserve(&context, reserve, &reservation);
      if (!s.ok()) return state.SkipWithError(s.error_message().c_str());
    }
    absl::Notification done;
    prefill::KvSender::Result result;
    prefill::KvSender sender(channel, (*server)->address(), request_id,
                             reservation.reservation_id(), [&](prefill::KvSender::Result r) {
                               result = std::move(r);
                               done.Notify();
                             });
    for (size_t i = 0; i < (*payload)->rects.size(); ++i) {
      const kv::KvChunkHeader header = kv::MakeChunkHeader(
          request_id, reservation.reservation_id(), num_tokens, (*payload)->rects[i], 5);
      sender.Send(prefill::MakeKvChunk(header, (*payload)->bytes[i], WireDtype(dtype)));
    }
    done.WaitForNotification();
    if (!result.status.ok()) return state.SkipWithError(result.status.ToString().c_str());
    seconds += absl::ToDoubleSeconds(result.done - result.first_write);
    bytes_sent += result.payload_bytes;
    state.SetIterationTime(absl::ToDoubleSeconds(result.done - result.first_write));
    grpc::ClientContext context;
    v1::ReleaseRequest release;
    release.set_request_id(request_id);
    release.set_reservation_id(reservation.reservation_id());
    v1::ReleaseResponse released;
    stub->Release(&context, release, &released);
  }
  state.counters["bytes_per_second"] =
      benchmark::Counter(static_cast<double>(bytes_sent) / seconds);
  state.counters["chunks"] = static_cast<double>((*payload)->rects.size());
  state.counters["bytes_per_token"] =
      static_cast<double>((*payload)->total_bytes) / static_cast<double>(num_tokens);
  state.SetLabel(std::string(kv::CacheDtypeName(dtype)));
  (*server)->Shutdown(absl::ZeroDuration());
  (*node)->Stop();
}

BENCHMARK(BM_KvTransfer)
    ->ArgNames({"tokens", "chunk_kib", "f16"})
    ->Args({256, 1024, 0})
    ->Args({1024, 256, 0})
    ->Args({1024, 1024, 0})
    ->Args({1024, 4096, 0})
    ->Args({1024, 1024, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace duet
