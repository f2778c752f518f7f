#include "node/completion.h"

#include <random>
#include <utility>

#include "absl/strings/str_cat.h"

namespace duet::node {

bool RequestSampling::greedy_argmax() const {
  return params.temperature == 0 && params.repetition_penalty == 1.0 &&
         params.frequency_penalty == 0 && params.presence_penalty == 0 && params.top_logprobs == 0;
}

absl::StatusOr<RequestSampling> ResolveSampling(const v1::SamplingParams& proto, int32_t vocab_size,
                                                bool require_max_tokens) {
  RequestSampling s;
  SamplingParams& p = s.params;
  if (proto.has_temperature()) p.temperature = proto.temperature();
  if (proto.has_top_k()) p.top_k = proto.top_k();
  if (proto.has_top_p()) p.top_p = proto.top_p();
  if (proto.has_min_p()) p.min_p = proto.min_p();
  if (proto.has_repetition_penalty()) p.repetition_penalty = proto.repetition_penalty();
  if (proto.has_presence_penalty()) p.presence_penalty = proto.presence_penalty();
  if (proto.has_frequency_penalty()) p.frequency_penalty = proto.frequency_penalty();
  p.seed = proto.has_seed() ? proto.seed() : std::random_device{}();
  p.top_logprobs = proto.logprobs();
  p.stop_token_ids.assign(proto.stop_token_ids().begin(), proto.stop_token_ids().end());
  p.stop_strings.assign(proto.stop_strings().begin(), proto.stop_strings().end());
  s.ignore_eos = proto.ignore_eos();
  if (absl::Status status = p.Validate(vocab_size); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: ", status.message()));
  }
  if (proto.has_max_tokens()) {
    if (proto.max_tokens() < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.max_tokens must be >= 1, got ", proto.max_tokens()));
    }
    s.max_tokens = proto.max_tokens();
  } else if (require_max_tokens) {
    return absl::InvalidArgumentError(
        "sampling.max_tokens must be set (the router resolves its default)");
  }
  return s;
}

uint64_t TokenSeed(uint64_t seed, int64_t index) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(index) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

v1::TokenLogprobs ToProto(const SampleResult& result) {
  v1::TokenLogprobs out;
  out.set_token_id(result.token);
  out.set_logprob(result.logprob);
  for (const TokenLogprob& t : result.top_logprobs) {
    v1::TopLogprob* top = out.add_top_logprobs();
    top->set_token_id(t.token);
    top->set_logprob(t.logprob);
  }
  return out;
}

v1::FinishReason ToFinishReason(StopKind kind) {
  switch (kind) {
    case StopKind::kNone:
      return v1::FINISH_REASON_UNSPECIFIED;
    case StopKind::kEos:
    case StopKind::kStopToken:
      return v1::FINISH_REASON_STOP;
    case StopKind::kStopString:
      return v1::FINISH_REASON_STOP_STRING;
    case StopKind::kLength:
      return v1::FINISH_REASON_LENGTH;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

Completion::Completion(const Tokenizer* tokenizer, RequestSampling sampling,
                       std::vector<int32_t> prompt, int32_t vocab_size)
    : tokenizer_(tokenizer),
      sampling_(std::move(sampling)),
      prompt_(std::move(prompt)),
      vocab_size_(vocab_size) {
  if (!sampling_.params.stop_strings.empty()) {
    detokenizer_.emplace(*tokenizer_);
    stop_matcher_.emplace(sampling_.params.stop_strings);
  }
}

SampleResult Completion::Sample(absl::Span<const float> logits) const {
  SamplingParams params = sampling_.params;
  params.seed = TokenSeed(sampling_.params.seed, static_cast<int64_t>(generated_.size()));
  // The parameters were validated by ResolveSampling, so creation cannot fail.
  absl::StatusOr<Sampler> sampler = Sampler::Create(params, vocab_size_);
  return sampler->Sample(logits, prompt_, generated_);
}

std::vector<double> Completion::Distribution(absl::Span<const float> logits,
                                             absl::Span<const int32_t> drafts) const {
  std::vector<int32_t> generated = generated_;
  generated.insert(generated.end(), drafts.begin(), drafts.end());
  const absl::StatusOr<Sampler> sampler = Sampler::Create(sampling_.params, vocab_size_);
  std::vector<double> dense(static_cast<size_t>(vocab_size_), 0.0);
  for (const TokenProb& p : sampler->Distribution(logits, prompt_, generated)) {
    dense[static_cast<size_t>(p.token)] += p.prob;
  }
  return dense;
}

Sampler Completion::StepSampler() const {
  SamplingParams params = sampling_.params;
  params.seed = TokenSeed(sampling_.params.seed, static_cast<int64_t>(generated_.size()));
  return *Sampler::Create(params, vocab_size_);
}

StopKind Completion::Append(int32_t token) {
  generated_.push_back(token);
  const SamplingParams& p = sampling_.params;
  if (!sampling_.ignore_eos && tokenizer_->IsEndOfGeneration(token)) {
    stop_ = StopKind::kEos;
  } else if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) !=
             p.stop_token_ids.end()) {
    stop_ = StopKind::kStopToken;
  } else if (stop_matcher_.has_value() && stop_matcher_->Push(detokenizer_->Push(token)).stopped) {
    stop_ = StopKind::kStopString;
  } else if (sampling_.max_tokens > 0 &&
             static_cast<int64_t>(generated_.size()) >= sampling_.max_tokens) {
    stop_ = StopKind::kLength;
  }
  return stop_;
}

absl::Status Completion::Resume(absl::Span<const int32_t> tokens) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("resumed token ", i, " (", tokens[i],
                                                     ") is outside the vocab of ", vocab_size_));
    }
    if (Append(tokens[i]) != StopKind::kNone) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", tokens.size(), " resumed tokens already end the completion (at token ", i,
          ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace duet::node
