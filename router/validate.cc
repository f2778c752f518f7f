#include "router/validate.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"

namespace duet::router {
namespace {

using duet::v1::GenerateRequest;
using duet::v1::SamplingParams;

// Defaults of duet.v1.SamplingParams' optional fields (types.proto).
constexpr double kDefaultTemperature = 1.0;
constexpr int32_t kDefaultTopK = 0;
constexpr double kDefaultTopP = 1.0;
constexpr double kDefaultMinP = 0.0;
constexpr double kDefaultRepetitionPenalty = 1.0;
constexpr double kDefaultPresencePenalty = 0.0;
constexpr double kDefaultFrequencyPenalty = 0.0;
constexpr int32_t kMaxLogprobs = 20;

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

absl::Status CheckClientRequestId(const std::string& id) {
  if (id.size() > kMaxClientRequestIdBytes) {
    return Invalid(absl::StrCat("request_id must be at most ", kMaxClientRequestIdBytes,
                                " bytes, got ", id.size()));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(id[i]);
    if (c < 0x21 || c > 0x7e) {
      return Invalid(absl::StrCat("request_id must be printable ASCII without spaces; byte ", i,
                                  " is 0x", absl::Hex(c, absl::kZeroPad2)));
    }
  }
  return absl::OkStatus();
}

// Range checks on the fields the client set; messages name the proto field.
absl::Status CheckSampling(const SamplingParams& s, int64_t vocab_size) {
  if (s.has_temperature() && !(s.temperature() >= 0 && std::isfinite(s.temperature()))) {
    return Invalid(absl::StrCat("temperature must be >= 0 and finite, got ", s.temperature()));
  }
  if (s.has_top_k() && s.top_k() < 0) {
    return Invalid(absl::StrCat("top_k must be >= 0, got ", s.top_k()));
  }
  if (s.has_top_p() && !(s.top_p() > 0 && s.top_p() <= 1)) {
    return Invalid(absl::StrCat("top_p must be in (0, 1], got ", s.top_p()));
  }
  if (s.has_min_p() && !(s.min_p() >= 0 && s.min_p() <= 1)) {
    return Invalid(absl::StrCat("min_p must be in [0, 1], got ", s.min_p()));
  }
  if (s.has_repetition_penalty() &&
      !(s.repetition_penalty() > 0 && std::isfinite(s.repetition_penalty()))) {
    return Invalid(
        absl::StrCat("repetition_penalty must be > 0 and finite, got ", s.repetition_penalty()));
  }
  if (s.has_presence_penalty() && !(s.presence_penalty() >= -2 && s.presence_penalty() <= 2)) {
    return Invalid(absl::StrCat("presence_penalty must be in [-2, 2], got ", s.presence_penalty()));
  }
  if (s.has_frequency_penalty() && !(s.frequency_penalty() >= -2 && s.frequency_penalty() <= 2)) {
    return Invalid(
        absl::StrCat("frequency_penalty must be in [-2, 2], got ", s.frequency_penalty()));
  }
  if (s.logprobs() < 0 || s.logprobs() > kMaxLogprobs) {
    return Invalid(absl::StrCat("logprobs must be in [0, ", kMaxLogprobs, "], got ", s.logprobs()));
  }
  for (int i = 0; i < s.stop_strings_size(); ++i) {
    if (s.stop_strings(i).empty()) {
      return Invalid(absl::StrCat("stop_strings[", i, "] must be non-empty"));
    }
  }
  for (int i = 0; i < s.stop_token_ids_size(); ++i) {
    const int32_t id = s.stop_token_ids(i);
    if (id < 0 || id >= vocab_size) {
      return Invalid(
          absl::StrCat("stop_token_ids[", i, "] must be in [0, ", vocab_size, "), got ", id));
    }
  }
  if (s.has_max_tokens() && s.max_tokens() < 1) {
    return Invalid(absl::StrCat("max_tokens must be >= 1, got ", s.max_tokens()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ResolvePrompt(const GenerateRequest& request,
                                                   const ModelView& model) {
  const int64_t vocab_size = model.config->vocab_size;
  switch (request.prompt_case()) {
    case GenerateRequest::kText: {
      std::optional<bool> add_bos;
      if (request.has_add_bos()) add_bos = request.add_bos();
      DUET_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                            TokenizeText(*model.tokenizer, request.text(), add_bos));
      if (ids.empty()) {
        return Invalid(
            "the prompt is empty: text \"\" with no BOS token to start from (give some text or "
            "set add_bos on a model that has a BOS token)");
      }
      return ids;
    }
    case GenerateRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return Invalid("the prompt is empty: token_ids has no ids");
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= vocab_size) {
          return Invalid(absl::StrCat("token_ids.ids[", i, "] must be in [0, ", vocab_size,
                                      "), got ", ids[i]));
        }
      }
      return std::vector<int32_t>(ids.begin(), ids.end());
    }
    case GenerateRequest::PROMPT_NOT_SET:
      break;
  }
  return Invalid("a prompt is required: set text or token_ids");
}

}  // namespace

absl::Status CheckModel(std::string_view requested, std::string_view served) {
  if (requested.empty() || requested == served) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("model '", std::string(requested),
                                          "' is not served by this cluster (it serves '",
                                          std::string(served), "')"));
}

absl::StatusOr<std::vector<int32_t>> TokenizeText(const Tokenizer& tokenizer, std::string_view text,
                                                  std::optional<bool> add_bos) {
  if (!add_bos.has_value()) return tokenizer.Encode(text, /*add_special=*/true);
  if (*add_bos && tokenizer.bos_id() < 0) {
    return Invalid("add_bos is true but the model has no BOS token");
  }
  std::vector<int32_t> ids;
  if (*add_bos) ids.push_back(tokenizer.bos_id());
  const std::vector<int32_t> body = tokenizer.Encode(text, /*add_special=*/false);
  ids.insert(ids.end(), body.begin(), body.end());
  if (tokenizer.add_eos() && tokenizer.eos_id() >= 0) ids.push_back(tokenizer.eos_id());
  return ids;
}

absl::StatusOr<ResolvedRequest> ResolveGenerateRequest(const GenerateRequest& request,
                                                       const ModelView& model,
                                                       const ResolveOptions& options) {
  DUET_RETURN_IF_ERROR(CheckModel(request.model(), model.id));
  DUET_RETURN_IF_ERROR(CheckClientRequestId(request.request_id()));
  ResolvedRequest resolved;
  DUET_ASSIGN_OR_RETURN(resolved.prompt, ResolvePrompt(request, model));
  const SamplingParams& in = request.sampling();
  DUET_RETURN_IF_ERROR(CheckSampling(in, model.config->vocab_size));

  const int64_t num_prompt = static_cast<int64_t>(resolved.prompt.size());
  const int64_t context = model.config->context_length;
  int64_t max_tokens = 0;
  if (in.has_max_tokens()) {
    max_tokens = in.max_tokens();
    if (num_prompt + max_tokens > context) {
      return Invalid(absl::StrCat("prompt of ", num_prompt, " tokens + max_tokens ", max_tokens,
                                  " exceeds the context length ", context));
    }
  } else {
    if (num_prompt >= context) {
      return Invalid(absl::StrCat("prompt of ", num_prompt,
                                  " tokens leaves no room for completion tokens in the context "
                                  "length ",
                                  context));
    }
    max_tokens = std::min<int64_t>(std::max(options.default_max_tokens, 1), context - num_prompt);
  }

  SamplingParams& out = resolved.sampling;
  out = in;
  out.set_temperature(in.has_temperature() ? in.temperature() : kDefaultTemperature);
  out.set_top_k(in.has_top_k() ? in.top_k() : kDefaultTopK);
  out.set_top_p(in.has_top_p() ? in.top_p() : kDefaultTopP);
  out.set_min_p(in.has_min_p() ? in.min_p() : kDefaultMinP);
  out.set_seed(in.has_seed() ? in.seed() : options.fresh_seed);
  out.set_repetition_penalty(in.has_repetition_penalty() ? in.repetition_penalty()
                                                         : kDefaultRepetitionPenalty);
  out.set_presence_penalty(in.has_presence_penalty() ? in.presence_penalty()
                                                     : kDefaultPresencePenalty);
  out.set_frequency_penalty(in.has_frequency_penalty() ? in.frequency_penalty()
                                                       : kDefaultFrequencyPenalty);
  out.set_max_tokens(static_cast<int32_t>(max_tokens));

  switch (request.speculation()) {
    case duet::v1::SPECULATION_ON:
    case duet::v1::SPECULATION_OFF:
      resolved.speculation = request.speculation();
      break;
    case duet::v1::SPECULATION_DEFAULT:
      resolved.speculation =
          options.speculation_default_on ? duet::v1::SPECULATION_ON : duet::v1::SPECULATION_OFF;
      break;
    default:
      return Invalid(
          absl::StrCat("speculation must be SPECULATION_DEFAULT, SPECULATION_ON or "
                       "SPECULATION_OFF, got ",
                       static_cast<int>(request.speculation())));
  }
  resolved.cache_salt = request.cache_salt();
  resolved.client_request_id = request.request_id();
  return resolved;
}

}  // namespace duet::router
