#include "node/speculator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/base/status.h"
#include "common/model/requantize.h"
#include "common/model/sampling.h"
#include "common/spec/acceptance.h"

namespace duet::node {
namespace {

// The cost model's prior before it has measured two batch shapes: a step mostly fixed cost
// (memory-bound decode), so speculation is tried at first and the measurements take over.
constexpr double kPriorFixedSeconds = 0.01;
constexpr double kPriorPerRowSeconds = 0.0005;
// Weight of the newest measurement in the draft-time EMA (the first one sets it).
constexpr double kDraftCostEma = 0.2;
// After this many speculative steps in a row, one plain step measures the step time without
// drafts (the cost model needs both; when speculation pays, this costs 1 step in 16).
constexpr int64_t kPlainStepInterval = 16;
// Throughput comparison per batch size: the decay per step of the totals, the steps each side
// needs before the comparison counts, the re-test period while speculation loses, and the
// largest batch size with a bucket of its own.
constexpr double kThroughputDecay = 0.95;
constexpr int64_t kMinComparedSteps = 2;
constexpr int64_t kRetestInterval = 64;
constexpr int64_t kMaxRetestInterval = 1024;
constexpr int64_t kMaxBucket = 64;

double Seconds(absl::Time since) { return absl::ToDoubleSeconds(absl::Now() - since); }

}  // namespace

absl::Status SpeculationOptions::Validate() const {
  if (method != "off" && method != "ngram" && method != "draft" && method != "self") {
    return absl::InvalidArgumentError(absl::StrCat(
        "speculation method must be off, ngram, draft or self, got '", method, "'"));
  }
  if (method == "draft" && draft_model.empty()) {
    return absl::InvalidArgumentError("speculation method 'draft' needs a draft model file");
  }
  if (method == "self" && self_draft_type != GgmlType::kQ4_0 &&
      self_draft_type != GgmlType::kQ8_0) {
    return absl::InvalidArgumentError("the self-draft type must be q4_0 or q8_0");
  }
  DUET_RETURN_IF_ERROR(ngram.Validate());
  return adaptive.Validate();
}

absl::StatusOr<std::unique_ptr<Speculator>> Speculator::Create(
    const SpeculationOptions& options, const std::string& backend,
    std::shared_ptr<const GgufFile> target_file, const Engine& target,
    const EngineOptions& target_options) {
  DUET_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<spec::Proposer> proposer;
  if (options.method == "ngram") {
    proposer = std::make_unique<spec::NgramProposer>(options.ngram);
  } else if (options.method == "draft" || options.method == "self") {
    std::shared_ptr<const GgufFile> file;
    if (options.method == "draft") {
      absl::StatusOr<std::unique_ptr<GgufFile>> opened = GgufFile::Open(options.draft_model);
      if (!opened.ok()) {
        return absl::Status(opened.status().code(),
                            absl::StrCat("draft model: ", opened.status().message()));
      }
      file = std::move(*opened);
    } else {
      DUET_ASSIGN_OR_RETURN(file, RequantizeGguf(*target_file, options.self_draft_type));
    }
    EngineOptions draft_options = target_options;
    draft_options.kv_dtype = kv::CacheDtype::kF16;
    draft_options.num_kv_blocks = target.kv_layout().num_blocks;
    draft_options.profile = false;
    absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(backend, file, draft_options);
    if (!engine.ok()) {
      return absl::Status(engine.status().code(),
                          absl::StrCat("draft engine: ", engine.status().message()));
    }
    DUET_RETURN_IF_ERROR(WarmUp(**engine));
    DUET_ASSIGN_OR_RETURN(proposer,
                          spec::DraftModelProposer::Create(std::move(*engine),
                                                           target.config().vocab_size,
                                                           options.method));
  }
  return std::unique_ptr<Speculator>(new Speculator(options, std::move(proposer)));
}

Speculator::Speculator(const SpeculationOptions& options, std::unique_ptr<spec::Proposer> proposer)
    : options_(options),
      proposer_(std::move(proposer)),
      cost_(kPriorFixedSeconds, kPriorPerRowSeconds) {
  stats_.accepted_per_position.assign(static_cast<size_t>(options_.adaptive.max_draft_tokens), 0);
}

void Speculator::Throughput::Add(double t, double s) {
  tokens = kThroughputDecay * tokens + t;
  seconds = kThroughputDecay * seconds + s;
  ++steps;
}

Speculator::Bucket& Speculator::BucketFor(int64_t batch) {
  const size_t index = static_cast<size_t>(std::clamp<int64_t>(batch, 1, kMaxBucket));
  if (buckets_.size() <= index) buckets_.resize(index + 1);
  return buckets_[index];
}

bool Speculator::MeasuredToPay(int64_t batch) {
  Bucket& b = BucketFor(batch);
  if (b.plain.steps < kMinComparedSteps || b.spec.steps < kMinComparedSteps) return true;
  if (b.spec.rate() >= b.plain.rate()) {
    b.retest_interval = kRetestInterval;
    return true;
  }
  if (b.plain_steps_since_spec < b.retest_interval) return false;
  // A re-test; the next one waits twice as long unless speculation wins it.
  b.retest_interval = std::min(2 * b.retest_interval, kMaxRetestInterval);
  return true;
}

int64_t Speculator::Lookahead(uint64_t key, int64_t batch) {
  if (proposer_ == nullptr) return 0;
  if (!options_.adaptive_enabled) return options_.adaptive.max_draft_tokens;
  if (spec_steps_since_plain_ >= kPlainStepInterval || !MeasuredToPay(batch)) return 0;
  auto [it, inserted] = trackers_.try_emplace(key, options_.adaptive);
  const int64_t k = spec::ChooseDraftTokens(it->second, cost_, draft_cost_per_token_s_,
                                            std::max<int64_t>(batch, 1), options_.adaptive);
  if (k == 0) it->second.Record(0, 0);  // counts towards the next probe
  return k;
}

void Speculator::ObservePlainStep(int64_t rows, double seconds) {
  cost_.Observe(rows, seconds);
  spec_steps_since_plain_ = 0;
  Bucket& b = BucketFor(rows);
  b.plain.Add(static_cast<double>(rows), seconds);
  ++b.plain_steps_since_spec;
}

void Speculator::Release(uint64_t key) {
  trackers_.erase(key);
  if (proposer_ != nullptr) proposer_->Release(key);
}

absl::StatusOr<std::optional<std::vector<Speculator::Outcome>>> Speculator::Step(
    Engine& target, absl::Span<const Item> items) {
  if (proposer_ == nullptr || items.empty()) return std::nullopt;
  // 1. Drafts for the sequences granted lookahead.
  const absl::Time draft_start = absl::Now();
  std::vector<spec::ProposeRequest> requests;
  std::vector<size_t> requesters;
  int64_t max_asked = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].lookahead <= 0) continue;
    requests.push_back({items[i].key, items[i].context, items[i].lookahead});
    requesters.push_back(i);
    max_asked = std::max(max_asked, items[i].lookahead);
  }
  if (requests.empty()) return std::nullopt;
  std::vector<std::vector<int32_t>> drafts(items.size());
  bool any = false;
  {
    absl::StatusOr<std::vector<std::vector<int32_t>>> proposed = proposer_->Propose(requests);
    if (!proposed.ok()) {
      // The draft engine failed: the target decodes this step plainly, and the sequences'
      // draft state starts over (it may be half-updated).
      spdlog::warn("speculation: the {} proposer failed, decoding without drafts: {}",
                   proposer_->name(), proposed.status().ToString());
      for (const spec::ProposeRequest& r : requests) proposer_->Release(r.key);
      return std::nullopt;
    }
    for (size_t j = 0; j < requesters.size(); ++j) {
      std::vector<int32_t>& d = (*proposed)[j];
      if (static_cast<int64_t>(d.size()) > items[requesters[j]].lookahead) {
        d.resize(static_cast<size_t>(items[requesters[j]].lookahead));
      }
      any = any || !d.empty();
      drafts[requesters[j]] = std::move(d);
    }
  }
  const double draft_seconds = Seconds(draft_start);
  const double per_token = draft_seconds / static_cast<double>(max_asked);
  draft_cost_per_token_s_ = draft_cost_known_ ? (1 - kDraftCostEma) * draft_cost_per_token_s_ +
                                                    kDraftCostEma * per_token
                                              : per_token;
  draft_cost_known_ = true;
  for (size_t i : requesters) {
    if (drafts[i].empty()) trackers_.try_emplace(items[i].key, options_.adaptive).first->second.Record(0, 0);
  }
  if (!any) return std::nullopt;

  // 2. One verify pass over the whole batch.
  const absl::Time verify_start = absl::Now();
  std::vector<std::vector<int32_t>> rows(items.size());
  std::vector<VerifyItem> verify;
  bool all_greedy = true;
  int64_t num_rows = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    rows[i].push_back(items[i].token);
    rows[i].insert(rows[i].end(), drafts[i].begin(), drafts[i].end());
    verify.push_back({items[i].seq, rows[i]});
    all_greedy = all_greedy && items[i].completion->sampling().greedy_argmax();
    num_rows += static_cast<int64_t>(rows[i].size());
  }
  std::vector<int32_t> ids;
  std::vector<float> logits;
  if (all_greedy) {
    DUET_ASSIGN_OR_RETURN(ids, target.VerifyBatchGreedy(verify));
  } else {
    DUET_ASSIGN_OR_RETURN(logits, target.VerifyBatch(verify));
  }

  // 3. Acceptance per sequence.
  const size_t vocab = static_cast<size_t>(target.config().vocab_size);
  std::vector<Outcome> outcomes(items.size());
  std::vector<CommitItem> commits;
  size_t row0 = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const size_t n = rows[i].size();
    const Completion& completion = *items[i].completion;
    Outcome& out = outcomes[i];
    auto row_logits = [&](size_t r) {
      return absl::MakeConstSpan(logits.data() + (row0 + r) * vocab, vocab);
    };
    if (completion.sampling().greedy_argmax()) {
      std::vector<int32_t> target_tokens(n);
      for (size_t r = 0; r < n; ++r) {
        target_tokens[r] = all_greedy ? ids[row0 + r] : ArgMax(row_logits(r));
      }
      const spec::Verdict v = spec::AcceptGreedy(drafts[i], target_tokens);
      out.accepted = v.num_accepted;
      out.tokens.assign(drafts[i].begin(), drafts[i].begin() + v.num_accepted);
      out.tokens.push_back(v.next_token);
    } else if (drafts[i].empty()) {
      const absl::Span<const float> row = row_logits(0);
      out.logits.assign(row.begin(), row.end());
    } else {
      std::vector<std::vector<double>> p(n);
      for (size_t r = 0; r < n; ++r) {
        p[r] = completion.Distribution(row_logits(r), absl::MakeConstSpan(drafts[i]).subspan(0, r));
      }
      Sampler rng = completion.StepSampler();
      const spec::Verdict v = spec::AcceptSampled(drafts[i], p, {}, rng);
      out.accepted = v.num_accepted;
      out.tokens.assign(drafts[i].begin(), drafts[i].begin() + v.num_accepted);
      out.tokens.push_back(v.next_token);
    }
    out.drafted = static_cast<int64_t>(drafts[i].size());
    commits.push_back({items[i].seq, 1 + out.accepted});
    row0 += n;
  }
  DUET_RETURN_IF_ERROR(target.CommitBatch(commits));
  cost_.Observe(num_rows, Seconds(verify_start));
  ++spec_steps_since_plain_;
  int64_t emitted = 0;
  for (const Outcome& out : outcomes) emitted += out.logits.empty() ? out.accepted + 1 : 1;
  Bucket& bucket = BucketFor(static_cast<int64_t>(items.size()));
  bucket.spec.Add(static_cast<double>(emitted), Seconds(draft_start));
  bucket.plain_steps_since_spec = 0;

  // 4. Statistics and each sequence's acceptance rate.
  for (size_t i = 0; i < items.size(); ++i) {
    const Outcome& out = outcomes[i];
    if (out.drafted == 0) continue;
    trackers_.try_emplace(items[i].key, options_.adaptive).first->second.Record(out.drafted,
                                                                               out.accepted);
    ++stats_.num_drafts;
    stats_.num_draft_tokens += out.drafted;
    stats_.num_accepted_tokens += out.accepted;
    stats_.num_emitted_tokens += out.accepted + 1;
    for (int64_t j = 0; j < out.accepted; ++j) ++stats_.accepted_per_position[static_cast<size_t>(j)];
  }
  return outcomes;
}

}  // namespace duet::node
