// duet logits --model FILE --prompt TEXT [-n N] [--top K] [--backend vulkan|cpu]
//   [--kv-dtype f32|f16|fp8] [--vk-device NAME|INDEX] [--profile]
//
// Runs the prompt, then N greedy steps, and prints one JSON object:
//   {"prompt_tokens": [ids], "positions": [{"pos": p, "top": [[id, logit], ...]}, ...],
//    "greedy": [ids]}
// positions covers 0 .. prompt_len+N-1 (the logits computed at p predict token p+1);
// greedy[i] is the argmax at position prompt_len-1+i, for i in 0..N. This is the tool for
// comparing Duet's numerics with other engines.
#include <algorithm>
#include <cstdio>
#include <numeric>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/base/json.h"
#include "common/model/sampling.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/model_loader.h"

namespace duet::cli {
namespace {

// The k largest logits of one row, highest first; ties go to the lower id.
std::string TopJson(absl::Span<const float> row, int64_t k) {
  std::vector<int32_t> ids(row.size());
  std::iota(ids.begin(), ids.end(), 0);
  k = std::min<int64_t>(k, static_cast<int64_t>(row.size()));
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return row[a] > row[b] || (row[a] == row[b] && a < b);
  });
  std::string out = "[";
  for (int64_t i = 0; i < k; ++i) {
    absl::StrAppend(&out, i ? ", " : "", "[", ids[i], ", ", JsonFloat(row[ids[i]]), "]");
  }
  return out + "]";
}

}  // namespace

int RunLogits(const Args& args) {
  const std::string kCmd = "duet logits";
  std::string model_path;
  std::string prompt;
  EngineFlags engine_flags;
  int64_t num_steps = 0;
  int64_t top = 5;
  ArgParser parser(kCmd);
  parser.AddString("model", &model_path, "GGUF model file", true, "m");
  parser.AddString("prompt", &prompt, "prompt text (BOS is added as the model says)", false, "p");
  parser.AddInt("steps", &num_steps, "greedy steps after the prompt (default 0)", "n");
  parser.AddInt("top", &top, "logits to print per position (default 5)");
  AddEngineFlags(parser, &engine_flags);
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;
  if (num_steps < 0) return UsageError(kCmd, absl::StrFormat("-n must be >= 0, got %d", num_steps));
  if (top < 1) return UsageError(kCmd, absl::StrFormat("--top must be >= 1, got %d", top));

  absl::StatusOr<EngineOptions> engine_options = EngineOptionsFromFlags(engine_flags);
  if (!engine_options.ok()) {
    if (engine_options.status().code() == absl::StatusCode::kInvalidArgument) {
      return UsageError(kCmd, std::string(engine_options.status().message()));
    }
    return Fail(kCmd, engine_options.status());
  }

  absl::StatusOr<LoadedModel> loaded = LoadModel(model_path);
  if (!loaded.ok()) return Fail(kCmd, loaded.status());
  absl::StatusOr<std::vector<int32_t>> prompt_tokens = TokenizePrompt(*loaded, prompt, num_steps);
  if (!prompt_tokens.ok()) return UsageError(kCmd, std::string(prompt_tokens.status().message()));

  const int64_t vocab = loaded->config.vocab_size;
  const int64_t prompt_len = static_cast<int64_t>(prompt_tokens->size());
  // Positions 0 .. prompt_len + num_steps - 1 (the last greedy token is never fed back).
  const int64_t num_positions = prompt_len + num_steps;
  if (absl::Status s =
          StartEngine(&*loaded, model_path, engine_flags.backend, *engine_options, num_positions);
      !s.ok()) {
    return Fail(kCmd, s);
  }
  Engine& engine = *loaded->engine;
  const std::vector<int32_t> blocks = SingleSequenceBlocks(engine.kv_layout(), num_positions);
  absl::StatusOr<std::vector<float>> logits =
      engine.Prefill({blocks, 0, 0}, *prompt_tokens, /*all_logits=*/true);
  if (!logits.ok()) return Fail(kCmd, logits.status());

  std::vector<std::string> positions;
  std::vector<int32_t> greedy;
  auto record = [&](int64_t pos, absl::Span<const float> row) {
    positions.push_back(absl::StrFormat("{\"pos\": %d, \"top\": %s}", pos, TopJson(row, top)));
  };
  for (int64_t p = 0; p < prompt_len; ++p) {
    record(p, absl::MakeConstSpan(logits->data() + p * vocab, vocab));
  }
  std::vector<float> last(logits->end() - vocab, logits->end());
  greedy.push_back(ArgMax(last));
  for (int64_t step = 0; step < num_steps; ++step) {
    const DecodeItem item{{blocks, prompt_len + step, 0}, greedy.back()};
    logits = engine.DecodeStep({&item, 1});
    if (!logits.ok()) return Fail(kCmd, logits.status());
    record(prompt_len + step, *logits);
    greedy.push_back(ArgMax(*logits));
  }
  std::printf("{\"prompt_tokens\": [%s],\n \"positions\": [\n  %s\n ],\n \"greedy\": [%s]}\n",
              absl::StrJoin(*prompt_tokens, ", ").c_str(),
              absl::StrJoin(positions, ",\n  ").c_str(), absl::StrJoin(greedy, ", ").c_str());
  if (engine_flags.profile) PrintProfile(engine);
  return 0;
}

}  // namespace duet::cli
