// Speculative decoding's acceptance rules (see acceptance.h for the contract and the proof
// that the sampled rule is lossless).
#include "common/spec/acceptance.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/spec/check.h"

namespace duet::spec {
namespace {

void CheckSizes(absl::Span<const int32_t> drafts,
                absl::Span<const std::vector<double>> target_probs,
                absl::Span<const std::vector<double>> draft_probs) {
  if (target_probs.size() != drafts.size() + 1) {
    Die(absl::StrCat("target_probs.size() ", target_probs.size(),
                     " != drafts.size() + 1 = ", drafts.size() + 1));
  }
  if (!draft_probs.empty() && draft_probs.size() != drafts.size()) {
    Die(absl::StrCat("draft_probs.size() ", draft_probs.size(), " is neither 0 nor ",
                     drafts.size()));
  }
  const size_t vocab = target_probs[0].size();
  if (vocab == 0) Die("target_probs[0] is empty");
  auto check_vocab = [vocab](absl::Span<const std::vector<double>> dists, const char* what) {
    for (size_t i = 0; i < dists.size(); ++i) {
      if (dists[i].size() != vocab) {
        Die(absl::StrCat(what, "[", i, "] has ", dists[i].size(), " entries, target_probs[0] ",
                         vocab));
      }
    }
  };
  check_vocab(target_probs, "target_probs");
  check_vocab(draft_probs, "draft_probs");
  for (size_t i = 0; i < drafts.size(); ++i) {
    if (drafts[i] < 0 || static_cast<size_t>(drafts[i]) >= vocab) {
      Die(absl::StrCat("drafts[", i, "] = ", drafts[i], " outside [0, ", vocab, ")"));
    }
  }
}

// The correction after draft x was rejected at a position with target p and draft q (q null:
// a point mass on x): a draw from max(0, p - q), or from p when that is all zero.
int32_t DrawResidual(const std::vector<double>& p, const std::vector<double>* q, int32_t x,
                     Sampler& rng) {
  std::vector<double> residual(p.size());
  double total = 0;
  for (size_t t = 0; t < p.size(); ++t) {
    const double q_t = q != nullptr ? (*q)[t] : (static_cast<int32_t>(t) == x ? 1.0 : 0.0);
    residual[t] = std::max(0.0, p[t] - q_t);
    total += residual[t];
  }
  return rng.Draw(total > 0 ? residual : p);
}

}  // namespace

Verdict AcceptGreedy(absl::Span<const int32_t> drafts, absl::Span<const int32_t> target_tokens) {
  if (target_tokens.size() != drafts.size() + 1) {
    Die(absl::StrCat("target_tokens.size() ", target_tokens.size(),
                     " != drafts.size() + 1 = ", drafts.size() + 1));
  }
  size_t accepted = 0;
  while (accepted < drafts.size() && drafts[accepted] == target_tokens[accepted]) ++accepted;
  return Verdict{static_cast<int64_t>(accepted), target_tokens[accepted]};
}

Verdict AcceptSampled(absl::Span<const int32_t> drafts,
                      absl::Span<const std::vector<double>> target_probs,
                      absl::Span<const std::vector<double>> draft_probs, Sampler& rng) {
  CheckSizes(drafts, target_probs, draft_probs);
  for (size_t i = 0; i < drafts.size(); ++i) {
    const int32_t x = drafts[i];
    const std::vector<double>* q = draft_probs.empty() ? nullptr : &draft_probs[i];
    const double p_x = target_probs[i][static_cast<size_t>(x)];
    const double q_x = q != nullptr ? (*q)[static_cast<size_t>(x)] : 1.0;
    // u < p/q without dividing: q_x == 0 (a draft q could not have produced) then accepts
    // exactly when the target allows x at all.
    if (rng.Uniform() * q_x < p_x) continue;
    return Verdict{static_cast<int64_t>(i), DrawResidual(target_probs[i], q, x, rng)};
  }
  return Verdict{static_cast<int64_t>(drafts.size()), rng.Draw(target_probs.back())};
}

std::vector<double> Densify(absl::Span<const TokenProb> dist, int32_t vocab_size) {
  if (vocab_size <= 0) Die(absl::StrCat("vocab_size must be > 0, got ", vocab_size));
  std::vector<double> dense(static_cast<size_t>(vocab_size), 0.0);
  for (const TokenProb& tp : dist) {
    if (tp.token < 0 || tp.token >= vocab_size) {
      Die(absl::StrCat("token ", tp.token, " outside [0, ", vocab_size, ")"));
    }
    dense[static_cast<size_t>(tp.token)] += tp.prob;
  }
  return dense;
}

}  // namespace duet::spec
