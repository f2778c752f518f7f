// Checks a client's GenerateRequest / TokenizeRequest against the served model and resolves it
// into what the nodes receive: the prompt as token ids and SamplingParams with every default
// applied. Pure: no RPCs, no clock; the "fresh" seed for requests without one is passed in.
//
// Every rejection is INVALID_ARGUMENT naming the field and the offending value (NOT_FOUND for an
// unknown model), e.g. "top_p must be in (0, 1], got 0" or "prompt of 500 tokens + max_tokens 20
// exceeds the context length 512".
#ifndef DUET_ROUTER_VALIDATE_H_
#define DUET_ROUTER_VALIDATE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/model_config.h"
#include "common/model/tokenizer.h"
#include "duet/v1/duet.pb.h"
#include "duet/v1/types.pb.h"

namespace duet::router {

// The model the router serves. Pointers are not owned and must outlive every use.
struct ModelView {
  std::string_view id;  // ModelInfo.id
  const Tokenizer* tokenizer = nullptr;
  const ModelConfig* config = nullptr;
};

// Server defaults (from duet.v1.ClusterConfig).
struct ResolveOptions {
  // SamplingParams.max_tokens when unset; capped by what the context leaves after the prompt.
  int32_t default_max_tokens = 256;
  // What SPECULATION_DEFAULT resolves to.
  bool speculation_default_on = false;
  // SamplingParams.seed when unset (the caller draws it at random per request).
  uint64_t fresh_seed = 0;
};

// A request ready to be sent to nodes.
struct ResolvedRequest {
  std::vector<int32_t> prompt;        // >= 1 ids, each in [0, vocab_size)
  duet::v1::SamplingParams sampling;  // every optional field set (max_tokens included)
  duet::v1::Speculation speculation = duet::v1::SPECULATION_OFF;  // ON or OFF, never DEFAULT
  std::string cache_salt;
  std::string client_request_id;  // GenerateRequest.request_id ("" when the client set none)
};

// Most bytes of a client-chosen request id.
inline constexpr size_t kMaxClientRequestIdBytes = 128;

// OK when `requested` names the served model ("" = the only model); else NOT_FOUND naming both,
// e.g. "model 'llama' is not served by this cluster (it serves 'tiny')".
absl::Status CheckModel(std::string_view requested, std::string_view served);

// Tokenizes a text prompt. add_bos: absent = the vocabulary's default (GGUF add_bos_token).
// INVALID_ARGUMENT when add_bos is true but the model has no BOS token.
absl::StatusOr<std::vector<int32_t>> TokenizeText(const Tokenizer& tokenizer, std::string_view text,
                                                  std::optional<bool> add_bos);

// Validates `request` and applies the defaults. Checks, in this order: model, request_id
// (<= 128 printable ASCII bytes), the prompt (set, non-empty after tokenization, ids in
// [0, vocab_size)), every sampling field's range, stop_strings non-empty, stop_token_ids in
// the vocabulary, max_tokens >= 1, and prompt + max_tokens <= context length.
// REQUIRES: model.tokenizer and model.config are non-null.
absl::StatusOr<ResolvedRequest> ResolveGenerateRequest(const duet::v1::GenerateRequest& request,
                                                       const ModelView& model,
                                                       const ResolveOptions& options);

}  // namespace duet::router

#endif  // DUET_ROUTER_VALIDATE_H_
