#include "tools/duet/client_flags.h"

#include <cstdint>

#include "absl/strings/str_cat.h"

namespace duet::cli {

void AddClientFlags(ArgParser& parser, ClientFlags* flags, bool with_model_id) {
  if (with_model_id) {
    parser.AddString("model", &flags->model, "model id (default: the cluster's only model)");
  }
  parser.AddInt("max-tokens", &flags->max_tokens,
                "most tokens to generate (default: the router's)", "n");
  parser.AddDouble("temperature", &flags->temperature, "0 = greedy (default 1)");
  parser.AddInt("top-k", &flags->top_k, "keep the k most likely tokens, 0 = off");
  parser.AddDouble("top-p", &flags->top_p, "nucleus sampling, in (0, 1]");
  parser.AddDouble("min-p", &flags->min_p, "drop tokens under min-p x the top probability");
  parser.AddInt("seed", &flags->seed, "RNG seed (default: the server picks one)");
  parser.AddDouble("repeat-penalty", &flags->repetition_penalty, "> 0, 1 = off");
  parser.AddDouble("presence-penalty", &flags->presence_penalty, "in [-2, 2]");
  parser.AddDouble("frequency-penalty", &flags->frequency_penalty, "in [-2, 2]");
  parser.AddRepeated("stop", &flags->stops, "stop string (repeatable)");
  parser.AddBool("ignore-eos", &flags->ignore_eos, "keep generating past end-of-generation");
  parser.AddBool("no-bos", &flags->no_bos, "do not prepend BOS to the prompt");
  parser.AddString("cache-salt", &flags->cache_salt, "prefix-cache namespace");
  parser.AddInt("timeout-s", &flags->timeout_s, "deadline of the request, seconds (0 = none)");
}

std::string CheckClientFlags(const ClientFlags& flags) {
  if (flags.max_tokens < INT32_MIN || flags.max_tokens > INT32_MAX) {
    return absl::StrCat("-n must fit in 32 bits, got ", flags.max_tokens);
  }
  if (flags.top_k < INT32_MIN || flags.top_k > INT32_MAX) {
    return absl::StrCat("--top-k must fit in 32 bits, got ", flags.top_k);
  }
  if (flags.seed < 0) return absl::StrCat("--seed must be >= 0, got ", flags.seed);
  if (flags.timeout_s < 0) return absl::StrCat("--timeout-s must be >= 0, got ", flags.timeout_s);
  return "";
}

v1::GenerateRequest MakeGenerateRequest(const ArgParser& parser, const ClientFlags& flags,
                                        const std::string& prompt) {
  v1::GenerateRequest request;
  request.set_model(flags.model);
  request.set_text(prompt);
  if (flags.no_bos) request.set_add_bos(false);
  request.set_cache_salt(flags.cache_salt);
  v1::SamplingParams* s = request.mutable_sampling();
  if (parser.WasSet("max-tokens")) s->set_max_tokens(static_cast<int32_t>(flags.max_tokens));
  if (parser.WasSet("temperature")) s->set_temperature(flags.temperature);
  if (parser.WasSet("top-k")) s->set_top_k(static_cast<int32_t>(flags.top_k));
  if (parser.WasSet("top-p")) s->set_top_p(flags.top_p);
  if (parser.WasSet("min-p")) s->set_min_p(flags.min_p);
  if (parser.WasSet("seed")) s->set_seed(static_cast<uint64_t>(flags.seed));
  if (parser.WasSet("repeat-penalty")) s->set_repetition_penalty(flags.repetition_penalty);
  if (parser.WasSet("presence-penalty")) s->set_presence_penalty(flags.presence_penalty);
  if (parser.WasSet("frequency-penalty")) s->set_frequency_penalty(flags.frequency_penalty);
  for (const std::string& stop : flags.stops) s->add_stop_strings(stop);
  s->set_ignore_eos(flags.ignore_eos);
  return request;
}

}  // namespace duet::cli
