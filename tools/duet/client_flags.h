// The request flags of `duet client` and `duet cluster --prompt`: sampling and stopping, mapped
// onto a duet.v1.GenerateRequest. Only flags the user gave are set; the others keep the
// router's defaults (temperature 1, no top-k/top-p/min-p, the router's default_max_tokens).
#ifndef DUET_TOOLS_DUET_CLIENT_FLAGS_H_
#define DUET_TOOLS_DUET_CLIENT_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/base/args.h"
#include "duet/v1/duet.pb.h"

namespace duet::cli {

struct ClientFlags {
  std::string model;
  int64_t max_tokens = 0;
  double temperature = 0;
  int64_t top_k = 0;
  double top_p = 0;
  double min_p = 0;
  int64_t seed = 0;
  double repetition_penalty = 0;
  double presence_penalty = 0;
  double frequency_penalty = 0;
  std::vector<std::string> stops;
  bool ignore_eos = false;
  bool no_bos = false;
  std::string cache_salt;
  int64_t timeout_s = 0;
};

// with_model_id: also --model (the model id; `duet cluster` uses --model for the file).
void AddClientFlags(ArgParser& parser, ClientFlags* flags, bool with_model_id = true);

// "" when the flags fit the request's fields, else the problem (-n or --top-k outside int32,
// a negative --seed or --timeout-s).
std::string CheckClientFlags(const ClientFlags& flags);

// The request for `prompt` with the flags the user set. Ranges are the router's to check (it
// answers INVALID_ARGUMENT naming the field), except flags that do not fit the proto's types.
v1::GenerateRequest MakeGenerateRequest(const ArgParser& parser, const ClientFlags& flags,
                                        const std::string& prompt);

}  // namespace duet::cli

#endif  // DUET_TOOLS_DUET_CLIENT_FLAGS_H_
