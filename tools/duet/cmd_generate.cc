// duet generate --model FILE --prompt TEXT -n N [sampling flags] [--backend vulkan|cpu]
//   [--kv-dtype f32|f16|fp8] [--vk-device NAME|INDEX] [--profile]
//
// Streams the generated text to stdout as it is produced, then prints timing to stderr.
// Defaults follow llama.cpp's CLI (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05).
#include <chrono>
#include <cstdio>
#include <random>

#include "absl/strings/str_format.h"
#include "common/model/detokenizer.h"
#include "common/model/sampling.h"
#include "common/model/stop_strings.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/model_loader.h"

namespace duet::cli {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void Emit(const std::string& text) {
  if (text.empty()) return;
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

int RunGenerate(const Args& args) {
  const std::string kCmd = "duet generate";
  std::string model_path;
  std::string prompt;
  EngineFlags engine_flags;
  int64_t num_generate = 64;
  int64_t top_k = 40;
  int64_t seed = -1;
  int64_t logprobs = 0;
  bool ignore_eos = false;
  SamplingParams params;
  params.temperature = 0.8;
  params.top_p = 0.95;
  params.min_p = 0.05;
  std::vector<std::string> stops;
  ArgParser parser(kCmd);
  parser.AddString("model", &model_path, "GGUF model file", true, "m");
  parser.AddString("prompt", &prompt, "prompt text (BOS is added as the model says)", false, "p");
  parser.AddInt("max-tokens", &num_generate, "tokens to generate (default 64)", "n");
  parser.AddDouble("temperature", &params.temperature, "0 = greedy (default 0.8)");
  parser.AddInt("top-k", &top_k, "keep the k most likely tokens, 0 = off (default 40)");
  parser.AddDouble("top-p", &params.top_p, "nucleus sampling, in (0, 1] (default 0.95)");
  parser.AddDouble("min-p", &params.min_p,
                   "drop tokens under min-p x the top probability "
                   "(default 0.05)");
  parser.AddDouble("repeat-penalty", &params.repetition_penalty,
                   "repetition penalty over prompt and output, 1 = off");
  parser.AddDouble("frequency-penalty", &params.frequency_penalty, "in [-2, 2], 0 = off");
  parser.AddDouble("presence-penalty", &params.presence_penalty, "in [-2, 2], 0 = off");
  parser.AddInt("seed", &seed, "RNG seed (default: random, printed to stderr)");
  parser.AddRepeated("stop", &stops, "stop string (repeatable); not included in the output");
  parser.AddBool("ignore-eos", &ignore_eos, "keep generating past end-of-generation tokens");
  parser.AddInt("logprobs", &logprobs, "print the top-N logprobs of each token to stderr");
  AddEngineFlags(parser, &engine_flags);
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;

  if (num_generate < 1) {
    return UsageError(kCmd, absl::StrFormat("-n must be at least 1, got %d", num_generate));
  }
  if (top_k < 0 || top_k > INT32_MAX) {
    return UsageError(kCmd, absl::StrFormat("top_k must be >= 0, got %d", top_k));
  }
  if (logprobs < 0 || logprobs > 20) {
    return UsageError(kCmd, absl::StrFormat("--logprobs must be in [0, 20], got %d", logprobs));
  }
  if (seed < 0) seed = static_cast<int64_t>(std::random_device{}() >> 1);
  params.top_k = static_cast<int32_t>(top_k);
  params.seed = static_cast<uint64_t>(seed);
  params.stop_strings = stops;
  params.top_logprobs = static_cast<int32_t>(logprobs);

  absl::StatusOr<EngineOptions> engine_options = EngineOptionsFromFlags(engine_flags);
  if (!engine_options.ok()) {
    if (engine_options.status().code() == absl::StatusCode::kInvalidArgument) {
      return UsageError(kCmd, std::string(engine_options.status().message()));
    }
    return Fail(kCmd, engine_options.status());
  }

  auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<LoadedModel> loaded = LoadModel(model_path);
  if (!loaded.ok()) return Fail(kCmd, loaded.status());
  const int32_t vocab = static_cast<int32_t>(loaded->config.vocab_size);
  if (absl::Status s = params.Validate(vocab); !s.ok())
    return UsageError(kCmd, std::string(s.message()));
  absl::StatusOr<std::vector<int32_t>> prompt_tokens =
      TokenizePrompt(*loaded, prompt, num_generate);
  if (!prompt_tokens.ok()) return UsageError(kCmd, std::string(prompt_tokens.status().message()));
  absl::StatusOr<Sampler> sampler = Sampler::Create(params, vocab);
  if (!sampler.ok()) return UsageError(kCmd, std::string(sampler.status().message()));
  const int64_t num_positions = static_cast<int64_t>(prompt_tokens->size()) + num_generate;
  if (absl::Status s =
          StartEngine(&*loaded, model_path, engine_flags.backend, *engine_options, num_positions);
      !s.ok()) {
    return Fail(kCmd, s);
  }
  Engine& engine = *loaded->engine;
  const std::vector<int32_t> blocks = SingleSequenceBlocks(engine.kv_layout(), num_positions);
  const double load_seconds = SecondsSince(load_start);
  if (params.temperature > 0) std::fprintf(stderr, "seed: %lld\n", static_cast<long long>(seed));

  StreamingDetokenizer detokenizer(*loaded->tokenizer);
  StopStringMatcher stop_matcher(stops);
  std::vector<int32_t> generated;
  std::string finish_reason = "length";
  bool stopped_by_string = false;

  auto prefill_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<float>> logits = engine.Prefill({blocks, 0, 0}, *prompt_tokens);
  if (!logits.ok()) return Fail(kCmd, logits.status());
  const double prefill_seconds = SecondsSince(prefill_start);

  auto decode_start = std::chrono::steady_clock::now();
  while (true) {
    SampleResult result = sampler->Sample(*logits, *prompt_tokens, generated);
    generated.push_back(result.token);
    if (logprobs > 0) {
      std::string line =
          absl::StrFormat("[logprobs] token %d (%.4f):", result.token, result.logprob);
      for (const TokenLogprob& t : result.top_logprobs) {
        absl::StrAppendFormat(&line, " %d=%.4f", t.token, t.logprob);
      }
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    bool end_of_generation = !ignore_eos && loaded->tokenizer->IsEndOfGeneration(result.token);
    if (end_of_generation || sampler->IsStopToken(result.token)) {
      finish_reason = "stop";
      break;
    }
    StopStringMatcher::Result text = stop_matcher.Push(detokenizer.Push(result.token));
    Emit(text.emit);
    if (text.stopped) {
      finish_reason = "stop";
      stopped_by_string = true;
      break;
    }
    if (static_cast<int64_t>(generated.size()) >= num_generate) break;
    const DecodeItem item{
        {blocks, static_cast<int64_t>(prompt_tokens->size() + generated.size()) - 1, 0},
        result.token};
    logits = engine.DecodeStep({&item, 1});
    if (!logits.ok()) return Fail(kCmd, logits.status());
  }
  if (!stopped_by_string) {
    // Text held back for a possible UTF-8 continuation or stop-string prefix.
    Emit(stop_matcher.Push(detokenizer.Flush()).emit);
    Emit(stop_matcher.Flush());
  }
  std::printf("\n");
  std::fflush(stdout);  // Before the timing line on stderr.
  const double decode_seconds = SecondsSince(decode_start);
  // The first generated token comes from the prefill's logits; the rest each took a step.
  const double decode_steps = static_cast<double>(generated.size() - 1);
  std::fprintf(stderr,
               "load: %.2f s | prompt: %zu tokens, %.1f tokens/s | generated: %zu tokens, "
               "%.1f tokens/s | finish: %s\n",
               load_seconds, prompt_tokens->size(),
               static_cast<double>(prompt_tokens->size()) / prefill_seconds, generated.size(),
               decode_steps > 0 ? decode_steps / decode_seconds : 0.0, finish_reason.c_str());
  if (engine_flags.profile) PrintProfile(engine);
  return 0;
}

}  // namespace duet::cli
