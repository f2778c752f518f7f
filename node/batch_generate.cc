#include "node/batch_generate.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/time/clock.h"
#include "common/base/status.h"

namespace duet::node {

absl::StatusOr<BatchGenerateResult> GenerateBatch(Engine& engine, Speculator* spec,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  int64_t max_new, const RequestSampling& sampling,
                                                  int64_t blocks_per_seq, uint64_t key_base) {
  BatchGenerateResult run;
  const int32_t vocab = engine.config().vocab_size;
  std::vector<std::vector<int32_t>> tables(prompts.size());
  std::vector<Completion> completions;
  const absl::Time prefill_start = absl::Now();
  for (size_t i = 0; i < prompts.size(); ++i) {
    for (int64_t b = 0; b < blocks_per_seq; ++b) {
      tables[i].push_back(static_cast<int32_t>(static_cast<int64_t>(i) * blocks_per_seq + b));
    }
    RequestSampling s = sampling;
    s.params.seed += i;
    completions.emplace_back(nullptr, s, prompts[i], vocab);
    DUET_ASSIGN_OR_RETURN(std::vector<float> logits,
                          engine.Prefill({tables[i], 0, static_cast<int32_t>(i)}, prompts[i]));
    completions[i].Append(completions[i].Sample(logits).token);
  }
  run.prefill_seconds = absl::ToDoubleSeconds(absl::Now() - prefill_start);
  const absl::Time decode_start = absl::Now();
  while (true) {
    std::vector<size_t> active;
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (static_cast<int64_t>(completions[i].generated().size()) < max_new) active.push_back(i);
    }
    if (active.empty()) break;
    ++run.steps;
    std::vector<std::vector<int32_t>> contexts;
    for (size_t i : active) {
      contexts.push_back(prompts[i]);
      const std::vector<int32_t>& g = completions[i].generated();
      contexts.back().insert(contexts.back().end(), g.begin(), g.end());
    }
    std::vector<Speculator::Item> items;
    std::vector<DecodeItem> plain;
    for (size_t j = 0; j < active.size(); ++j) {
      const size_t i = active[j];
      const SequenceRef seq{tables[i], static_cast<int64_t>(contexts[j].size()) - 1,
                            static_cast<int32_t>(i)};
      int64_t lookahead = 0;
      if (spec != nullptr) {
        const int64_t left = max_new - static_cast<int64_t>(completions[i].generated().size());
        lookahead = std::min(spec->Lookahead(key_base + i, static_cast<int64_t>(active.size())),
                             left - 1);
      }
      items.push_back({key_base + i, seq, contexts[j].back(), contexts[j], lookahead,
                       &completions[i]});
      plain.push_back({seq, contexts[j].back()});
    }
    std::optional<std::vector<Speculator::Outcome>> outcomes;
    if (spec != nullptr) {
      DUET_ASSIGN_OR_RETURN(outcomes, spec->Step(engine, items));
    }
    if (outcomes.has_value()) {
      for (size_t j = 0; j < active.size(); ++j) {
        Completion& c = completions[active[j]];
        const Speculator::Outcome& o = (*outcomes)[j];
        if (!o.logits.empty()) {
          c.Append(c.Sample(o.logits).token);
        } else {
          for (int32_t t : o.tokens) c.Append(t);
        }
      }
      continue;
    }
    const absl::Time step_start = absl::Now();
    bool greedy = true;
    for (size_t i : active) greedy = greedy && completions[i].sampling().greedy_argmax();
    std::vector<int32_t> ids;
    std::vector<float> logits;
    if (greedy) {
      DUET_ASSIGN_OR_RETURN(ids, engine.DecodeStepGreedy(plain));
    } else {
      DUET_ASSIGN_OR_RETURN(logits, engine.DecodeStep(plain));
    }
    if (spec != nullptr) {
      spec->ObservePlainStep(static_cast<int64_t>(active.size()),
                             absl::ToDoubleSeconds(absl::Now() - step_start));
    }
    for (size_t j = 0; j < active.size(); ++j) {
      Completion& c = completions[active[j]];
      c.Append(greedy ? ids[j]
                      : c.Sample(absl::MakeConstSpan(logits).subspan(
                                     j * static_cast<size_t>(vocab), static_cast<size_t>(vocab)))
                            .token);
    }
  }
  run.decode_seconds = absl::ToDoubleSeconds(absl::Now() - decode_start);
  for (size_t i = 0; i < prompts.size(); ++i) {
    run.outputs.push_back(completions[i].generated());
    if (spec != nullptr) spec->Release(key_base + i);
  }
  return run;
}

}  // namespace duet::node
