#include "common/model/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace duet {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Logits are float32, so probabilities built from them are only good to about 1e-7 relative.
// A top-p mass or min-p ratio within this slack of its threshold counts as reaching it; this
// makes hand-written boundaries (0.5 + 0.3 against top_p 0.8) behave as written.
constexpr double kProbSlack = 1e-6;

// First chunk sorted by top-p without top-k; later chunks double.
constexpr size_t kTopPFirstChunk = 256;

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "duet::Sampler: %s\n", message.c_str());
  std::abort();
}

void CheckIds(absl::Span<const int32_t> ids, int32_t vocab_size, const char* what) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size) {
      Die(absl::StrCat(what, " token id ", id, " outside [0, ", vocab_size, ")"));
    }
  }
}

void CheckLogits(size_t size, int32_t vocab_size) {
  if (size != static_cast<size_t>(vocab_size)) {
    Die(absl::StrCat("logits.size() ", size, " != vocab_size ", vocab_size));
  }
}

float Sanitize(float x) { return std::isnan(x) ? kNegInf : x; }

// Uniform in [0, 1) from the top 53 bits, so the draw is the same on every standard library
// (std::uniform_real_distribution is not pinned down by the standard).
double Uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Orders token ids by logit, highest first, lower id on ties (a strict weak order: the
// logits hold no NaN).
struct HigherLogit {
  const float* z;
  bool operator()(int32_t a, int32_t b) const { return z[a] > z[b] || (z[a] == z[b] && a < b); }
};

// The k highest logits' ids (ties: lower id), highest first. REQUIRES: 0 < k < z.size().
// nth_element runs on a copy of the values: contiguous, direct compares, no id indirection.
std::vector<int32_t> TopK(const std::vector<float>& z, size_t k) {
  std::vector<float> values = z;
  std::nth_element(values.begin(), values.begin() + static_cast<ptrdiff_t>(k - 1), values.end(),
                   std::greater<float>());
  const float threshold = values[k - 1];
  std::vector<int32_t> ids;
  ids.reserve(k);
  for (size_t i = 0; i < z.size(); ++i) {
    if (z[i] > threshold) ids.push_back(static_cast<int32_t>(i));
  }
  for (size_t i = 0; i < z.size() && ids.size() < k; ++i) {
    if (z[i] == threshold) ids.push_back(static_cast<int32_t>(i));
  }
  std::sort(ids.begin(), ids.end(), HigherLogit{z.data()});
  return ids;
}

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

}  // namespace

absl::Status SamplingParams::Validate(int32_t vocab_size) const {
  if (vocab_size <= 0) return Invalid(absl::StrCat("vocab_size must be > 0, got ", vocab_size));
  if (!std::isfinite(temperature)) {
    return Invalid(absl::StrCat("temperature must be finite, got ", temperature));
  }
  if (temperature < 0) return Invalid(absl::StrCat("temperature must be >= 0, got ", temperature));
  if (top_k < 0) return Invalid(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0 && top_p <= 1)) {
    return Invalid(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (!(min_p >= 0 && min_p <= 1)) {
    return Invalid(absl::StrCat("min_p must be in [0, 1], got ", min_p));
  }
  if (!(repetition_penalty > 0) || !std::isfinite(repetition_penalty)) {
    return Invalid(
        absl::StrCat("repetition_penalty must be > 0 and finite, got ", repetition_penalty));
  }
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2)) {
    return Invalid(absl::StrCat("frequency_penalty must be in [-2, 2], got ", frequency_penalty));
  }
  if (!(presence_penalty >= -2 && presence_penalty <= 2)) {
    return Invalid(absl::StrCat("presence_penalty must be in [-2, 2], got ", presence_penalty));
  }
  if (top_logprobs < 0 || top_logprobs > kMaxTopLogprobs) {
    return Invalid(
        absl::StrCat("top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ", top_logprobs));
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    const int32_t id = stop_token_ids[i];
    if (id < 0 || id >= vocab_size) {
      return Invalid(
          absl::StrCat("stop_token_ids[", i, "] must be in [0, ", vocab_size, "), got ", id));
    }
  }
  for (size_t i = 0; i < stop_strings.size(); ++i) {
    if (stop_strings[i].empty()) {
      return Invalid(absl::StrCat("stop_strings[", i, "] must be non-empty, got \"\""));
    }
  }
  return absl::OkStatus();
}

int32_t ArgMax(absl::Span<const float> logits) {
  int32_t best = 0;
  float best_value = kNegInf;
  for (size_t i = 0; i < logits.size(); ++i) {
    // Strict '>' keeps the lowest id on ties and never picks NaN.
    if (logits[i] > best_value) {
      best_value = logits[i];
      best = static_cast<int32_t>(i);
    }
  }
  return best;
}

absl::StatusOr<Sampler> Sampler::Create(const SamplingParams& params, int32_t vocab_size) {
  if (absl::Status status = params.Validate(vocab_size); !status.ok()) return status;
  return Sampler(params, vocab_size);
}

Sampler::Sampler(SamplingParams params, int32_t vocab_size)
    : params_(std::move(params)), vocab_size_(vocab_size), rng_(params_.seed) {}

bool Sampler::IsStopToken(int32_t token) const {
  return std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) !=
         params_.stop_token_ids.end();
}

double Sampler::Uniform() { return Uniform01(rng_); }

int32_t Sampler::Draw(absl::Span<const double> weights) {
  double total = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (!(weights[i] >= 0) || !std::isfinite(weights[i])) {
      Die(absl::StrCat("Draw: weights[", i, "] must be finite and >= 0, got ", weights[i]));
    }
    total += weights[i];
  }
  if (!(total > 0) || !std::isfinite(total)) {
    Die(absl::StrCat("Draw: weights must sum to a finite value > 0, got ", total));
  }
  const double target = Uniform() * total;
  // As in Sample(): the first index whose cumulative weight passes target; rounding can leave
  // target just above the final sum, and then the last positive weight absorbs it.
  double mass = 0;
  int32_t chosen = -1;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] == 0) continue;
    mass += weights[i];
    chosen = static_cast<int32_t>(i);
    if (mass > target) break;
  }
  return chosen;
}

void Sampler::ApplyPenalties(absl::Span<float> logits, absl::Span<const int32_t> prompt,
                             absl::Span<const int32_t> generated) const {
  CheckLogits(logits.size(), vocab_size_);
  CheckIds(prompt, vocab_size_, "prompt");
  CheckIds(generated, vocab_size_, "generated");

  const double repetition = params_.repetition_penalty;
  if (repetition != 1.0 && (!prompt.empty() || !generated.empty())) {
    std::vector<bool> seen(static_cast<size_t>(vocab_size_), false);
    auto penalize = [&](int32_t token) {
      if (seen[token]) return;
      seen[token] = true;
      const double x = logits[token];
      logits[token] = static_cast<float>(x > 0 ? x / repetition : x * repetition);
    };
    for (int32_t token : prompt) penalize(token);
    for (int32_t token : generated) penalize(token);
  }

  const double frequency = params_.frequency_penalty;
  const double presence = params_.presence_penalty;
  if ((frequency != 0.0 || presence != 0.0) && !generated.empty()) {
    // Sorting a copy counts occurrences without a vocab-sized buffer; generated is short.
    std::vector<int32_t> sorted(generated.begin(), generated.end());
    std::sort(sorted.begin(), sorted.end());
    for (size_t begin = 0; begin < sorted.size();) {
      size_t end = begin;
      while (end < sorted.size() && sorted[end] == sorted[begin]) ++end;
      const double count = static_cast<double>(end - begin);
      float& x = logits[sorted[begin]];
      x = static_cast<float>(static_cast<double>(x) - (frequency * count + presence));
      begin = end;
    }
  }
}

std::vector<float> Sampler::PenalizedCopy(absl::Span<const float> logits,
                                          absl::Span<const int32_t> prompt,
                                          absl::Span<const int32_t> generated) const {
  CheckLogits(logits.size(), vocab_size_);
  std::vector<float> z(logits.size());
  std::transform(logits.begin(), logits.end(), z.begin(), Sanitize);
  ApplyPenalties(absl::MakeSpan(z), prompt, generated);
  return z;
}

Sampler::Kept Sampler::Filter(const std::vector<float>& z) const {
  const size_t vocab = z.size();
  const float max = *std::max_element(z.begin(), z.end());
  const double inv_temperature = 1.0 / params_.temperature;
  // The equality branch keeps the top weight exactly 1 and avoids inf - inf when the maximum
  // is infinite. A tiny temperature sends every other weight to exp(-inf) = 0.
  auto weight = [&](size_t i) -> float {
    if (z[i] == max) return 1.0f;
    return std::exp(static_cast<float>((static_cast<double>(z[i]) - max) * inv_temperature));
  };
  // The top token weighs 1, so min-p is an absolute weight threshold.
  const float min_weight =
      params_.min_p > 0 ? static_cast<float>(params_.min_p - kProbSlack) : 0.0f;

  Kept kept;
  const bool top_k_on = params_.top_k > 0 && static_cast<size_t>(params_.top_k) < vocab;
  const bool top_p_on = params_.top_p < 1.0;
  if (!top_k_on && !top_p_on) {
    kept.all = true;
    kept.min_weight = min_weight;
    kept.weights.resize(vocab);
    for (size_t i = 0; i < vocab; ++i) kept.weights[i] = weight(i);
    return kept;
  }

  kept.all = false;
  std::vector<int32_t>& ids = kept.ids;
  std::vector<float>& w = kept.weights;  // w[i] belongs to ids[i].
  // Adds w[begin, end) to *mass; returns how many leading entries it takes for *mass to
  // reach `need`, or 0 when it is not reached yet.
  auto reach = [&w](size_t begin, size_t end, double need, double* mass) -> size_t {
    for (size_t i = begin; i < end; ++i) {
      *mass += w[i];
      if (*mass >= need) return i + 1;
    }
    return 0;
  };

  if (top_k_on) {
    ids = TopK(z, static_cast<size_t>(params_.top_k));
    w.resize(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) w[i] = weight(static_cast<size_t>(ids[i]));
    if (top_p_on) {
      double total = 0;
      for (float x : w) total += x;
      double mass = 0;
      const size_t count = reach(0, w.size(), (params_.top_p - kProbSlack) * total, &mass);
      if (count > 0) ids.resize(count);
    }
  } else {
    // Top-p alone: sort the head in doubling chunks until the mass is reached.
    std::vector<float> by_token(vocab);
    double total = 0;
    for (size_t i = 0; i < vocab; ++i) {
      by_token[i] = weight(i);
      total += by_token[i];
    }
    const double need = (params_.top_p - kProbSlack) * total;
    ids.resize(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    const HigherLogit higher{z.data()};
    double mass = 0;
    size_t sorted = 0;
    size_t chunk = kTopPFirstChunk;
    size_t count = 0;
    while (count == 0 && sorted < vocab) {
      const size_t next = std::min(vocab, sorted + chunk);
      if (next < vocab) {
        std::nth_element(ids.begin() + static_cast<ptrdiff_t>(sorted),
                         ids.begin() + static_cast<ptrdiff_t>(next), ids.end(), higher);
      }
      std::sort(ids.begin() + static_cast<ptrdiff_t>(sorted),
                ids.begin() + static_cast<ptrdiff_t>(next), higher);
      w.resize(next);
      for (size_t i = sorted; i < next; ++i) w[i] = by_token[static_cast<size_t>(ids[i])];
      count = reach(sorted, next, need, &mass);
      sorted = next;
      chunk *= 2;
    }
    ids.resize(count > 0 ? count : sorted);
  }
  w.resize(ids.size());

  // Weights are non-increasing along ids, so min-p cuts a suffix. ids[0] weighs 1 and stays.
  if (min_weight > 0) {
    const size_t count = static_cast<size_t>(
        std::find_if(w.begin(), w.end(), [&](float x) { return x < min_weight; }) - w.begin());
    ids.resize(count);
    w.resize(count);
  }
  return kept;
}

SampleResult Sampler::Sample(absl::Span<const float> logits, absl::Span<const int32_t> prompt,
                             absl::Span<const int32_t> generated) {
  const std::vector<float> z = PenalizedCopy(logits, prompt, generated);
  SampleResult result;
  if (params_.temperature == 0) {
    result.token = ArgMax(z);
  } else {
    const Kept kept = Filter(z);
    const std::vector<float>& w = kept.weights;
    const double u = Uniform01(rng_);
    // Scan in a fixed order (ids order, or token id order) until the cumulative weight
    // passes u * total. The top token weighs 1, so total >= 1 and something is kept.
    auto token_at = [&kept](size_t i) { return kept.all ? static_cast<int32_t>(i) : kept.ids[i]; };
    auto is_kept = [&kept](float x) { return x > 0 && x >= kept.min_weight; };
    double total = 0;
    for (float x : w) {
      if (is_kept(x)) total += x;
    }
    const double target = u * total;
    double mass = 0;
    int32_t chosen = -1;
    for (size_t i = 0; i < w.size(); ++i) {
      if (!is_kept(w[i])) continue;
      mass += w[i];
      chosen = token_at(i);
      // Rounding can leave target just above the final mass; the last kept token absorbs it.
      if (mass > target) break;
    }
    result.token = chosen;
  }
  FillLogprobs(logits, &result);
  return result;
}

std::vector<TokenProb> Sampler::Distribution(absl::Span<const float> logits,
                                             absl::Span<const int32_t> prompt,
                                             absl::Span<const int32_t> generated) const {
  const std::vector<float> z = PenalizedCopy(logits, prompt, generated);
  if (params_.temperature == 0) return {TokenProb{ArgMax(z), 1.0}};
  const Kept kept = Filter(z);
  std::vector<TokenProb> out;
  double total = 0;
  for (size_t i = 0; i < kept.weights.size(); ++i) {
    const float x = kept.weights[i];
    if (x <= 0 || x < kept.min_weight) continue;
    out.push_back({kept.all ? static_cast<int32_t>(i) : kept.ids[i], x});
    total += x;
  }
  for (TokenProb& tp : out) tp.prob /= total;
  if (kept.all) {
    const HigherLogit higher{z.data()};
    std::sort(out.begin(), out.end(),
              [&](const TokenProb& a, const TokenProb& b) { return higher(a.token, b.token); });
  }
  return out;
}

void Sampler::FillLogprobs(absl::Span<const float> logits, SampleResult* result) const {
  float max = kNegInf;
  for (float x : logits) max = std::max(max, Sanitize(x));
  double sum = 0;
  for (float x : logits) {
    x = Sanitize(x);
    sum += x == max ? 1.0 : static_cast<double>(std::exp(x - max));
  }
  const double log_sum = std::log(sum);
  auto logprob = [&](float x) -> float {
    x = Sanitize(x);
    if (x == max) return static_cast<float>(-log_sum);
    return static_cast<float>(static_cast<double>(x) - max - log_sum);
  };
  result->logprob = logprob(logits[result->token]);

  // Single pass keeping the best n, highest first. Ids arrive in increasing order, so a later
  // equal logit never displaces an earlier one: ties keep the lower id.
  const size_t n = std::min(static_cast<size_t>(params_.top_logprobs), logits.size());
  std::vector<std::pair<float, int32_t>> best;  // (sanitized logit, id)
  best.reserve(n + 1);
  for (size_t i = 0; i < logits.size() && n > 0; ++i) {
    const float x = Sanitize(logits[i]);
    if (best.size() == n && !(x > best.back().first)) continue;
    auto pos = std::find_if(best.begin(), best.end(), [x](const auto& e) { return e.first < x; });
    best.insert(pos, {x, static_cast<int32_t>(i)});
    if (best.size() > n) best.pop_back();
  }
  result->top_logprobs.clear();
  for (const auto& [x, id] : best) result->top_logprobs.push_back({id, logprob(x)});
}

}  // namespace duet
