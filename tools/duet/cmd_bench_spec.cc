// duet bench-spec --model FILE --speculation ngram|draft|self [--draft-model FILE]
//   [--self-draft-type q4_0|q8_0] [--num-speculative-tokens K] [--batch 1,8] [--gen 128]
//   [--prompt TEXT]... [--prompt-len N] [--seed N] [--backend vulkan|cpu] [--kv-dtype ...]
//   [--modes adaptive,fixed] [--repeat N] [--json FILE]
//
// Decode throughput with speculative decoding against without, on one engine: for every batch
// size, `batch` greedy sequences (the --prompt texts in turn, or random prompts of --prompt-len
// tokens) decode --gen tokens together (node::GenerateBatch, the decode node's loop without
// the scheduler), up to three ways: speculation off, on with the adaptive draft length (what a
// node runs), and on drafting K tokens every step (--modes picks the last two; off always
// runs). Reports decode tokens/s, the speedup over off, the acceptance rate and mean accepted
// length, and whether the outputs equal the plain run's (they must). One untimed run of each
// mode, as long as the timed ones, builds the pipelines first; then the modes run in turn,
// --repeat rounds, and each reports its median decode time. Acceptance counts cover every run
// of the mode.
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
#include "absl/strings/str_split.h"
#include "common/base/json.h"
#include "node/batch_generate.h"
#include "node/speculator.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/model_loader.h"

namespace duet::cli {
namespace {

struct ModeResult {
  std::string mode;  // "off", "adaptive", "fixed"
  int64_t batch = 0;
  double decode_seconds = 0;
  double tokens_per_s = 0;
  int64_t steps = 0;
  int64_t draft_tokens = 0;
  int64_t accepted_tokens = 0;
  int64_t drafts = 0;
  bool identical = true;
};

}  // namespace

int RunBenchSpec(const Args& args) {
  const std::string kCmd = "duet bench-spec";
  std::string model_path, json_path, self_draft_type = "q4_0", modes_flag = "adaptive,fixed";
  std::vector<std::string> texts;
  std::vector<int64_t> batches = {1, 8};
  int64_t gen = 128, prompt_len = 32, seed = 1, repeat = 3;
  node::SpeculationOptions spec_options;
  spec_options.method = "";
  EngineFlags engine_flags;
  ArgParser parser(kCmd);
  parser.AddString("model", &model_path, "GGUF model file", true, "m");
  parser.AddString("speculation", &spec_options.method, "ngram, draft or self", true);
  parser.AddString("draft-model", &spec_options.draft_model, "GGUF draft model (draft)");
  parser.AddString("self-draft-type", &self_draft_type, "q4_0 (default) or q8_0 (self)");
  parser.AddInt("num-speculative-tokens", &spec_options.adaptive.max_draft_tokens,
                "most drafted tokens per step (default 4)");
  parser.AddIntList("batch", &batches, "batch sizes (default 1,8)");
  parser.AddString("modes", &modes_flag,
                   "modes: off (always run, the baseline), adaptive, fixed (default "
                   "adaptive,fixed)");
  parser.AddInt("gen", &gen, "tokens generated per sequence (default 128)");
  parser.AddRepeated("prompt", &texts, "prompt text (repeatable; sequence i takes text i mod n)");
  parser.AddInt("prompt-len", &prompt_len, "random prompt length without --prompt (default 32)");
  parser.AddInt("seed", &seed, "seed of the random prompts (default 1)");
  parser.AddInt("repeat", &repeat, "timed runs per mode; the median counts (default 3)");
  parser.AddString("json", &json_path, "also write the results as JSON to this file");
  AddEngineFlags(parser, &engine_flags);
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;
  if (repeat < 1) return UsageError(kCmd, "--repeat must be >= 1");
  std::vector<std::string> modes = {"off"};
  for (absl::string_view m : absl::StrSplit(modes_flag, ',')) {
    if (m == "off") continue;  // always measured: the baseline
    if ((m != "adaptive" && m != "fixed") ||
        std::find(modes.begin(), modes.end(), m) != modes.end()) {
      return UsageError(kCmd,
                        absl::StrCat("--modes takes off, adaptive and/or fixed, once each, got '",
                                     modes_flag, "'"));
    }
    modes.emplace_back(m);
  }
  if (self_draft_type != "q4_0" && self_draft_type != "q8_0") {
    return UsageError(kCmd, "--self-draft-type must be q4_0 or q8_0");
  }
  spec_options.self_draft_type = self_draft_type == "q4_0" ? GgmlType::kQ4_0 : GgmlType::kQ8_0;
  if (spec_options.method == "off") return UsageError(kCmd, "--speculation off measures nothing");
  if (absl::Status s = spec_options.Validate(); !s.ok()) {
    return UsageError(kCmd, std::string(s.message()));
  }
  if (batches.empty() || gen < 2 || prompt_len < 1) {
    return UsageError(kCmd, "--batch needs a value, --gen >= 2 and --prompt-len >= 1");
  }
  for (int64_t b : batches) {
    if (b < 1 || b > 256) return UsageError(kCmd, "--batch values must be in [1, 256]");
  }
  absl::StatusOr<EngineOptions> options = EngineOptionsFromFlags(engine_flags);
  if (!options.ok()) return UsageError(kCmd, std::string(options.status().message()));
  absl::StatusOr<LoadedModel> loaded = LoadModel(model_path);
  if (!loaded.ok()) return Fail(kCmd, loaded.status());

  // Prompts.
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& text : texts) {
    absl::StatusOr<std::vector<int32_t>> ids = TokenizePrompt(*loaded, text, gen);
    if (!ids.ok()) return Fail(kCmd, ids.status());
    prompts.push_back(*std::move(ids));
  }
  if (prompts.empty()) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::uniform_int_distribution<int32_t> token(3, loaded->config.vocab_size - 1);
    for (int i = 0; i < 8; ++i) {
      prompts.emplace_back();
      for (int64_t j = 0; j < prompt_len; ++j) prompts.back().push_back(token(rng));
    }
  }
  int64_t longest = 0;
  for (const auto& p : prompts) {
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  }
  const int64_t max_batch = *std::max_element(batches.begin(), batches.end());
  const int64_t positions = longest + gen + spec_options.adaptive.max_draft_tokens + 1;
  if (positions > loaded->config.context_length) {
    return UsageError(kCmd, absl::StrFormat("prompt + --gen exceeds the context of %d tokens",
                                            loaded->config.context_length));
  }
  const int64_t blocks_per_seq = (positions + options->block_size - 1) / options->block_size;
  options->num_kv_blocks = blocks_per_seq * max_batch;
  options->max_sequences = max_batch;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      CreateEngine(engine_flags.backend, loaded->file, *options);
  if (!engine.ok()) return Fail(kCmd, engine.status());
  if (absl::Status s = WarmUp(**engine, spec_options.adaptive.max_draft_tokens + 1); !s.ok()) {
    return Fail(kCmd, s);
  }

  node::RequestSampling greedy;
  greedy.params.temperature = 0;
  greedy.max_tokens = gen;
  greedy.ignore_eos = true;
  std::vector<ModeResult> results;
  std::printf("%6s %9s %12s %8s %10s %12s %10s\n", "batch", "mode", "decode tok/s", "speedup",
              "accepted", "mean length", "identical");
  for (int64_t batch : batches) {
    std::vector<std::vector<int32_t>> batch_prompts;
    for (int64_t i = 0; i < batch; ++i) {
      batch_prompts.push_back(prompts[static_cast<size_t>(i) % prompts.size()]);
    }
    // The modes, each warmed up by one untimed run of the whole length (it builds every
    // pipeline the timed runs use: a verify's row count varies with the draft length), then
    // timed in turn --repeat times, so drift of the machine hits every mode alike.
    std::vector<std::unique_ptr<node::Speculator>> specs(modes.size());
    for (size_t m = 0; m < modes.size(); ++m) {
      if (m > 0) {
        node::SpeculationOptions o = spec_options;
        o.adaptive_enabled = modes[m] == "adaptive";
        absl::StatusOr<std::unique_ptr<node::Speculator>> created =
            node::Speculator::Create(o, engine_flags.backend, loaded->file, **engine, *options);
        if (!created.ok()) return Fail(kCmd, created.status());
        specs[m] = std::move(*created);
      }
      absl::StatusOr<node::BatchGenerateResult> warm = node::GenerateBatch(
          **engine, specs[m].get(), batch_prompts, gen, greedy, blocks_per_seq, 1u << 20);
      if (!warm.ok()) return Fail(kCmd, warm.status());
    }
    std::vector<std::vector<double>> seconds(modes.size());
    std::vector<node::BatchGenerateResult> last(modes.size());
    std::vector<ModeResult> mode_results(modes.size());
    std::vector<bool> identical(modes.size(), true);
    for (int64_t rep = 0; rep < repeat; ++rep) {
      for (size_t m = 0; m < modes.size(); ++m) {
        absl::StatusOr<node::BatchGenerateResult> run =
            node::GenerateBatch(**engine, specs[m].get(), batch_prompts, gen, greedy,
                                blocks_per_seq, static_cast<uint64_t>(rep) << 16);
        if (!run.ok()) return Fail(kCmd, run.status());
        seconds[m].push_back(run->decode_seconds);
        if (m > 0 && run->outputs != last[0].outputs) identical[m] = false;
        last[m] = *std::move(run);
      }
    }
    double off_tokens_per_s = 0;
    for (size_t m = 0; m < modes.size(); ++m) {
      std::sort(seconds[m].begin(), seconds[m].end());
      ModeResult r;
      r.mode = modes[m];
      r.batch = batch;
      r.decode_seconds = seconds[m][seconds[m].size() / 2];
      r.tokens_per_s = static_cast<double>(batch * (gen - 1)) / r.decode_seconds;
      r.steps = last[m].steps;
      r.identical = identical[m];
      if (specs[m] != nullptr) {
        // Totals over the timed runs and the warm-up.
        r.draft_tokens = specs[m]->stats().num_draft_tokens;
        r.accepted_tokens = specs[m]->stats().num_accepted_tokens;
        r.drafts = specs[m]->stats().num_drafts;
      }
      if (m == 0) off_tokens_per_s = r.tokens_per_s;
      std::printf("%6d %9s %12.2f %7.2fx %9.1f%% %12.2f %10s\n", static_cast<int>(batch),
                  r.mode.c_str(), r.tokens_per_s, r.tokens_per_s / off_tokens_per_s,
                  r.draft_tokens > 0 ? 100.0 * static_cast<double>(r.accepted_tokens) /
                                           static_cast<double>(r.draft_tokens)
                                     : 0.0,
                  r.drafts > 0
                      ? 1.0 + static_cast<double>(r.accepted_tokens) / static_cast<double>(r.drafts)
                      : 0.0,
                  r.identical ? "yes" : "NO");
      results.push_back(r);
    }
  }
  if (!json_path.empty()) {
    std::vector<std::string> rows;
    for (const ModeResult& r : results) {
      rows.push_back(absl::StrCat(
          "{\"batch\": ", r.batch, ", \"mode\": ", JsonString(r.mode),
          ", \"decode_seconds\": ", JsonFloat(static_cast<float>(r.decode_seconds)),
          ", \"decode_tokens_per_s\": ", JsonFloat(static_cast<float>(r.tokens_per_s)),
          ", \"steps\": ", r.steps, ", \"drafts\": ", r.drafts,
          ", \"draft_tokens\": ", r.draft_tokens, ", \"accepted_tokens\": ", r.accepted_tokens,
          ", \"identical_to_off\": ", r.identical ? "true" : "false", "}"));
    }
    const ModelConfig& c = loaded->config;
    const std::string json = absl::StrCat(
        "{\n \"device\": ", JsonString((*engine)->backend_name()),
        ",\n \"model\": {\"path\": ", JsonString(model_path), ", \"name\": ", JsonString(c.name),
        ", \"weight_type\": ", JsonString(WeightTypeName(*loaded->file)),
        ", \"num_layers\": ", c.num_layers, ", \"hidden_dim\": ", c.hidden_dim,
        ", \"vocab_size\": ", c.vocab_size,
        "},\n \"settings\": {\"speculation\": ", JsonString(spec_options.method),
        ", \"draft_model\": ", JsonString(spec_options.draft_model),
        ", \"self_draft_type\": ", JsonString(self_draft_type),
        ", \"num_speculative_tokens\": ", spec_options.adaptive.max_draft_tokens, ", \"modes\": [",
        absl::StrJoin(modes, ", ",
                      [](std::string* out, const std::string& m) { out->append(JsonString(m)); }),
        "]", ", \"kv_dtype\": ",
        JsonString(std::string(kv::CacheDtypeName((*engine)->kv_layout().dtype))),
        ", \"vk_cpu_threads\": ", engine_flags.vk_cpu_threads, ", \"gen\": ", gen,
        ", \"repeat\": ", repeat, ", \"prompts\": ", prompts.size(), ", \"batches\": [",
        absl::StrJoin(batches, ", "), "]},\n \"results\": [\n  ", absl::StrJoin(rows, ",\n  "),
        "\n ]\n}\n");
    std::ofstream out(json_path, std::ios::binary | std::ios::trunc);
    out << json;
    if (!out.good()) return Fail(kCmd, absl::UnavailableError("cannot write " + json_path));
  }
  if (engine_flags.profile) PrintProfile(**engine);
  for (const ModeResult& r : results) {
    if (!r.identical) {
      return Fail(kCmd, absl::InternalError("speculative outputs differ from the plain run"));
    }
  }
  return 0;
}

}  // namespace duet::cli
