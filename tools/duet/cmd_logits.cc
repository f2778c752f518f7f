// duet logits --model FILE --prompt TEXT [-n N] [--top K] [--backend cpu]
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
  std::string backend = "cpu";
  int64_t num_steps = 0;
  int64_t top = 5;
  ArgParser parser(kCmd);
  parser.AddString("model", &model_path, "GGUF model file", true, "m");
  parser.AddString("prompt", &prompt, "prompt text (BOS is added as the model says)", false, "p");
  parser.AddInt("steps", &num_steps, "greedy steps after the prompt (default 0)", "n");
  parser.AddInt("top", &top, "logits to print per position (default 5)");
  parser.AddString("backend", &backend, "cpu (the reference; the only backend for now)");
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;
  if (num_steps < 0) return UsageError(kCmd, absl::StrFormat("-n must be >= 0, got %d", num_steps));
  if (top < 1) return UsageError(kCmd, absl::StrFormat("--top must be >= 1, got %d", top));

  absl::StatusOr<LoadedModel> loaded = LoadModel(model_path, backend);
  if (!loaded.ok()) return Fail(kCmd, loaded.status());
  absl::StatusOr<std::vector<int32_t>> prompt_tokens = TokenizePrompt(*loaded, prompt, num_steps);
  if (!prompt_tokens.ok()) return UsageError(kCmd, std::string(prompt_tokens.status().message()));

  const int64_t vocab = loaded->model->config().vocab_size;
  const int64_t prompt_len = static_cast<int64_t>(prompt_tokens->size());
  CpuKvCache cache(loaded->model->config(), prompt_len + num_steps);
  absl::StatusOr<std::vector<float>> logits =
      loaded->model->Forward(*prompt_tokens, &cache, /*all_logits=*/true);
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
    int32_t next = greedy.back();
    logits = loaded->model->Forward(absl::MakeConstSpan(&next, 1), &cache);
    if (!logits.ok()) return Fail(kCmd, logits.status());
    record(prompt_len + step, *logits);
    greedy.push_back(ArgMax(*logits));
  }
  std::printf("{\"prompt_tokens\": [%s],\n \"positions\": [\n  %s\n ],\n \"greedy\": [%s]}\n",
              absl::StrJoin(*prompt_tokens, ", ").c_str(),
              absl::StrJoin(positions, ",\n  ").c_str(), absl::StrJoin(greedy, ", ").c_str());
  return 0;
}

}  // namespace duet::cli
