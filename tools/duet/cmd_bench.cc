// duet bench --model FILE [--prompt-len 128,512] [--gen 32] [--batch 1,8,32]
//   [--backend vulkan|cpu] [--kv-dtype f32|f16|fp8] [--vk-device NAME|INDEX] [--seed N]
//   [--json FILE] [--profile]
//
// For every (prompt length, batch size): prefill throughput (`batch` prompts of `prompt-len`
// random tokens, each prefilled by one Prefill call, chunked by the engine) and decode
// throughput (the `batch` sequences decoding together for `gen` greedy steps with
// DecodeStepGreedy). Pipelines are built by an untimed warm-up first. Prints a table; --json
// also writes the device, the model (path and config), the settings and the numbers.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/base/format.h"
#include "common/base/json.h"
#include "common/model/sampling.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/model_loader.h"

namespace duet::cli {
namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct BenchResult {
  int64_t prompt_len = 0;
  int64_t batch = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double prefill_tokens_per_s = 0;
  double decode_tokens_per_s = 0;
};

// Runs one combination. Sequence i uses blocks [i * blocks_per_seq, (i + 1) * blocks_per_seq)
// and tail slot i.
absl::StatusOr<BenchResult> RunOne(Engine& engine, int64_t prompt_len, int64_t batch, int64_t gen,
                                   int64_t blocks_per_seq, std::mt19937& rng) {
  const int64_t vocab = engine.config().vocab_size;
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    for (int64_t b = 0; b < blocks_per_seq; ++b) {
      tables[static_cast<size_t>(i)].push_back(static_cast<int32_t>(i * blocks_per_seq + b));
    }
  }
  BenchResult r;
  r.prompt_len = prompt_len;
  r.batch = batch;
  std::vector<DecodeItem> items(static_cast<size_t>(batch));
  auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < batch; ++i) {
    std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
    for (int32_t& t : prompt) t = token(rng);
    const SequenceRef seq{tables[static_cast<size_t>(i)], 0, static_cast<int32_t>(i)};
    absl::StatusOr<std::vector<float>> logits = engine.Prefill(seq, prompt);
    if (!logits.ok()) return logits.status();
    items[static_cast<size_t>(i)] = {
        {tables[static_cast<size_t>(i)], prompt_len, static_cast<int32_t>(i)}, ArgMax(*logits)};
  }
  r.prefill_seconds = Seconds(start);
  // One untimed step builds the decode pipelines of this batch size.
  absl::StatusOr<std::vector<int32_t>> next = engine.DecodeStepGreedy(items);
  if (!next.ok()) return next.status();
  start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < gen; ++step) {
    for (size_t i = 0; i < items.size(); ++i) {
      items[i].seq.num_cached += 1;
      items[i].token = (*next)[i];
    }
    next = engine.DecodeStepGreedy(items);
    if (!next.ok()) return next.status();
  }
  r.decode_seconds = Seconds(start);
  r.prefill_tokens_per_s = static_cast<double>(batch * prompt_len) / r.prefill_seconds;
  r.decode_tokens_per_s = static_cast<double>(batch * gen) / r.decode_seconds;
  return r;
}

}  // namespace

int RunBench(const Args& args) {
  for (const std::string& a : args) {
    if (a == "--cluster") return RunClusterBench(args);
  }
  const std::string kCmd = "duet bench";
  std::string model_path;
  std::vector<int64_t> prompt_lens = {128, 512};
  std::vector<int64_t> batches = {1, 8, 32};
  int64_t gen = 32;
  int64_t seed = 1;
  std::string json_path;
  EngineFlags engine_flags;
  ArgParser parser(kCmd);
  parser.AddString("model", &model_path, "GGUF model file", true, "m");
  parser.AddIntList("prompt-len", &prompt_lens, "prompt lengths in tokens (default 128,512)");
  parser.AddInt("gen", &gen, "decode steps per measurement (default 32)");
  parser.AddIntList("batch", &batches,
                    "batch sizes: prompts prefilled, then decoded together "
                    "(default 1,8,32)");
  parser.AddInt("seed", &seed, "seed of the random prompts (default 1)");
  parser.AddString("json", &json_path, "also write the results as JSON to this file");
  AddEngineFlags(parser, &engine_flags);
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;
  if (prompt_lens.empty() || batches.empty()) {
    return UsageError(kCmd, "--prompt-len and --batch need at least one value");
  }
  for (int64_t v : prompt_lens) {
    if (v < 1)
      return UsageError(kCmd, absl::StrFormat("--prompt-len values must be >= 1, got %d", v));
  }
  for (int64_t v : batches) {
    if (v < 1 || v > 4096) {
      return UsageError(kCmd, absl::StrFormat("--batch values must be in [1, 4096], got %d", v));
    }
  }
  if (gen < 1) return UsageError(kCmd, absl::StrFormat("--gen must be >= 1, got %d", gen));
  absl::StatusOr<EngineOptions> options = EngineOptionsFromFlags(engine_flags);
  if (!options.ok()) {
    if (options.status().code() == absl::StatusCode::kInvalidArgument) {
      return UsageError(kCmd, std::string(options.status().message()));
    }
    return Fail(kCmd, options.status());
  }

  absl::StatusOr<LoadedModel> loaded = LoadModel(model_path);
  if (!loaded.ok()) return Fail(kCmd, loaded.status());
  const ModelConfig& c = loaded->config;
  const int64_t max_prompt = *std::max_element(prompt_lens.begin(), prompt_lens.end());
  const int64_t max_batch = *std::max_element(batches.begin(), batches.end());
  // The warm-up step runs one position past the measured ones.
  const int64_t positions = max_prompt + gen + 1;
  if (positions > c.context_length) {
    return UsageError(kCmd, absl::StrFormat("--prompt-len %d plus --gen %d exceeds the model's "
                                            "context length of %d tokens",
                                            max_prompt, gen, c.context_length));
  }
  const int64_t blocks_per_seq = (positions + options->block_size - 1) / options->block_size;
  options->num_kv_blocks = blocks_per_seq * max_batch;
  options->max_sequences = max_batch;
  auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      CreateEngine(engine_flags.backend, loaded->file, *options);
  if (!engine.ok()) {
    return Fail(kCmd, absl::Status(engine.status().code(),
                                   absl::StrCat(model_path, ": ", engine.status().message())));
  }
  const double load_seconds = Seconds(load_start);
  const kv::KvLayout& layout = (*engine)->kv_layout();
  std::fprintf(
      stderr, "%s\n",
      absl::StrFormat("%s | %s | %d layers, hidden %d, %d/%d heads x %d, ffn %d, vocab "
                      "%d, %s weights | kv %s, %d blocks of %d (%s) | load %.2f s",
                      (*engine)->backend_name(), model_path, c.num_layers, c.hidden_dim,
                      c.num_heads, c.num_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size,
                      WeightTypeName(*loaded->file), std::string(kv::CacheDtypeName(layout.dtype)),
                      layout.num_blocks, layout.block_size,
                      FormatBytes(static_cast<uint64_t>(layout.total_bytes())), load_seconds)
          .c_str());

  // Warm-up: pipelines for prefill and a one-sequence decode.
  std::mt19937 rng(static_cast<uint32_t>(seed));
  if (absl::StatusOr<BenchResult> warm =
          RunOne(**engine, std::min<int64_t>(max_prompt, 64), 1, 1, blocks_per_seq, rng);
      !warm.ok()) {
    return Fail(kCmd, warm.status());
  }

  std::vector<BenchResult> results;
  std::printf("%10s %6s %16s %16s\n", "prompt_len", "batch", "prefill tok/s", "decode tok/s");
  for (int64_t prompt_len : prompt_lens) {
    for (int64_t batch : batches) {
      absl::StatusOr<BenchResult> r = RunOne(**engine, prompt_len, batch, gen, blocks_per_seq, rng);
      if (!r.ok()) return Fail(kCmd, r.status());
      std::printf("%10d %6d %16.1f %16.2f\n", static_cast<int>(prompt_len), static_cast<int>(batch),
                  r->prefill_tokens_per_s, r->decode_tokens_per_s);
      std::fflush(stdout);
      results.push_back(*r);
    }
  }
  if (engine_flags.profile) PrintProfile(**engine);

  if (!json_path.empty()) {
    std::vector<std::string> rows;
    for (const BenchResult& r : results) {
      rows.push_back(absl::StrFormat(
          "{\"prompt_len\": %d, \"batch\": %d, \"gen\": %d, \"prefill_seconds\": %s, "
          "\"prefill_tokens_per_s\": %s, \"decode_seconds\": %s, \"decode_tokens_per_s\": %s}",
          r.prompt_len, r.batch, gen, JsonFloat(static_cast<float>(r.prefill_seconds)),
          JsonFloat(static_cast<float>(r.prefill_tokens_per_s)),
          JsonFloat(static_cast<float>(r.decode_seconds)),
          JsonFloat(static_cast<float>(r.decode_tokens_per_s))));
    }
    const std::string json = absl::StrCat(
        "{\n \"device\": ", JsonString((*engine)->backend_name()),
        ",\n \"backend\": ", JsonString(engine_flags.backend),
        ",\n \"model\": {\"path\": ", JsonString(model_path), ", \"name\": ", JsonString(c.name),
        ", \"architecture\": ", JsonString(c.architecture_name),
        ", \"weight_type\": ", JsonString(WeightTypeName(*loaded->file)),
        ", \"vocab_size\": ", c.vocab_size, ", \"hidden_dim\": ", c.hidden_dim,
        ", \"num_layers\": ", c.num_layers, ", \"num_heads\": ", c.num_heads,
        ", \"num_kv_heads\": ", c.num_kv_heads, ", \"head_dim\": ", c.head_dim,
        ", \"ffn_dim\": ", c.ffn_dim, ", \"context_length\": ", c.context_length, "},\n",
        " \"settings\": {\"kv_dtype\": ", JsonString(std::string(kv::CacheDtypeName(layout.dtype))),
        ", \"block_size\": ", layout.block_size, ", \"kv_blocks\": ", layout.num_blocks,
        ", \"vk_cpu_threads\": ", engine_flags.vk_cpu_threads,
        ", \"prompt_lens\": [", absl::StrJoin(prompt_lens, ", "), "], \"batches\": [",
        absl::StrJoin(batches, ", "), "], \"gen\": ", gen, ", \"seed\": ", seed,
        ", \"load_seconds\": ", JsonFloat(static_cast<float>(load_seconds)), "},\n",
        " \"results\": [\n  ", absl::StrJoin(rows, ",\n  "), "\n ]\n}\n");
    std::ofstream out(json_path, std::ios::binary | std::ios::trunc);
    out << json;
    if (!out.good()) {
      return Fail(kCmd, absl::UnavailableError(absl::StrCat("cannot write ", json_path)));
    }
  }
  return 0;
}

}  // namespace duet::cli
