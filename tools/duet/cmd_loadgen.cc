// duet loadgen --addr HOST:PORT [--rate R[,R2,...] | --concurrency C] [--requests N]
//   [--prompt-len N|A:B] [--output-len N|A:B] [--dataset FILE.jsonl] [--shared-prefix-len N]
//   [--num-prefixes K] [--turns T] [--cache-salt S] [--warmup N] [--ttft-slo-ms X]
//   [--tpot-slo-ms Y] [--goodput] [--seed S] [--json FILE]
//
// Load against any Duet router. Arrivals are open-loop Poisson at --rate conversations/s (each
// starts on schedule whether or not earlier ones finished), or a closed loop of --concurrency
// clients. Prompts are random token ids of --prompt-len tokens (a fixed N or a uniform A:B
// range) with --output-len output tokens (ignore_eos, greedy), or come from a JSONL dataset: one
// object per line with "prompt" (text) or "prompt_len", and "output_len" (or "max_tokens").
//
// Prefix-cache workloads (random-token prompts only): --shared-prefix-len N puts one of
// --num-prefixes K shared prefixes of N random tokens (K tenants' system prompts) before each
// prompt; conversation i uses prefix i mod K. --turns T makes each of the --requests a
// conversation of T turns sent one after another: turn k + 1's prompt is turn k's prompt, the
// tokens turn k generated and a new suffix of --prompt-len tokens. Every turn is a request in
// the statistics. --cache-salt sets GenerateRequest.cache_salt on every request. With one seed,
// each conversation's first-turn suffix and output length stay the same whatever the prefix and
// turn flags, so runs with and without them compare on one workload. --warmup N first sends N
// conversations (the same shared prefixes, suffixes of their own) one at a time, unmeasured.
//
// Reports per rate: time to first token, inter-token latency, time per output token and
// end-to-end latency (mean, p50, p90, p99), request and output-token throughput, the prefix-cache
// hit rate (Usage.cached_prompt_tokens / Usage.prompt_tokens over all requests, and per turn),
// and SLO attainment: the share of requests whose TTFT <= --ttft-slo-ms and whose time per
// output token ((e2e - TTFT) / (tokens - 1)) <= --tpot-slo-ms. Goodput (DistServe's definition)
// is the highest rate with attainment >= 90%: over the --rate list, or with --goodput found by
// doubling the rate from the first one until attainment drops below 90%, then bisecting twice.
// A plain-text table on stdout, JSON with --json, a progress bar on stderr.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/base/json.h"
#include "common/base/progress.h"
#include "common/rpc/channel.h"
#include "tools/cluster/generate_client.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/latency_stats.h"

namespace duet::cli {
namespace {

const char kCmd[] = "duet loadgen";
constexpr double kAttainmentTarget = 0.9;

// A length: fixed N, or uniform in [A, B].
struct LengthDist {
  int64_t min = 0, max = 0;
  int64_t Draw(std::mt19937_64& rng) const {
    return std::uniform_int_distribution<int64_t>(min, max)(rng);
  }
};

absl::StatusOr<LengthDist> ParseLength(const std::string& flag, const std::string& text) {
  LengthDist d;
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  if (parts.size() == 1 && absl::SimpleAtoi(parts[0], &d.min)) {
    d.max = d.min;
  } else if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &d.min) ||
             !absl::SimpleAtoi(parts[1], &d.max)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must be N or A:B (uniform), got '", text, "'"));
  }
  if (d.min < 1 || d.max < d.min) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " needs 1 <= A <= B, got '", text, "'"));
  }
  return d;
}

// One turn's new input: the tokens appended to the conversation so far (for turn 1 its whole
// prompt, shared prefix included) and how many tokens to generate.
struct Turn {
  std::vector<int32_t> tokens;
  int64_t output_len = 0;
};

// One conversation to send. Turn k + 1's prompt is turn k's prompt, then the tokens turn k
// generated, then turn k + 1's own tokens.
struct Item {
  std::string text;         // non-empty: a text prompt (--dataset), and `turns` is one turn
  std::vector<Turn> turns;  // >= 1
};

// The value of "key": number or "string" in one JSONL line (a flat object); false if absent.
bool JsonField(const std::string& line, const std::string& key, std::string* value) {
  const std::string quoted = absl::StrCat("\"", key, "\"");
  size_t pos = line.find(quoted);
  if (pos == std::string::npos) return false;
  pos = line.find(':', pos + quoted.size());
  if (pos == std::string::npos) return false;
  ++pos;
  while (pos < line.size() && line[pos] == ' ') ++pos;
  if (pos < line.size() && line[pos] == '"') {
    std::string out;
    for (++pos; pos < line.size() && line[pos] != '"'; ++pos) {
      if (line[pos] == '\\' && pos + 1 < line.size()) {
        const char c = line[++pos];
        out.push_back(c == 'n' ? '\n' : c == 't' ? '\t' : c);
      } else {
        out.push_back(line[pos]);
      }
    }
    *value = out;
    return true;
  }
  const size_t end = line.find_first_of(",}", pos);
  *value = line.substr(pos, end - pos);
  return true;
}

absl::StatusOr<std::vector<Item>> LoadDataset(const std::string& path, int32_t vocab,
                                              std::mt19937_64& rng) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--dataset: cannot open ", path));
  std::vector<Item> items;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Item item;
    Turn& turn = item.turns.emplace_back();
    std::string value;
    const auto where = [&] { return absl::StrCat(path, ":", number, ": "); };
    if (JsonField(line, "prompt", &value)) {
      item.text = value;
    } else if (JsonField(line, "prompt_len", &value)) {
      int64_t n = 0;
      if (!absl::SimpleAtoi(value, &n) || n < 1) {
        return absl::InvalidArgumentError(absl::StrCat(where(), "bad prompt_len '", value, "'"));
      }
      std::uniform_int_distribution<int32_t> token(3, vocab - 1);
      for (int64_t i = 0; i < n; ++i) turn.tokens.push_back(token(rng));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where(), "needs \"prompt\" or \"prompt_len\""));
    }
    if (!JsonField(line, "output_len", &value) && !JsonField(line, "max_tokens", &value)) {
      return absl::InvalidArgumentError(absl::StrCat(where(), "needs \"output_len\""));
    }
    if (!absl::SimpleAtoi(value, &turn.output_len) || turn.output_len < 1) {
      return absl::InvalidArgumentError(absl::StrCat(where(), "bad output_len '", value, "'"));
    }
    items.push_back(std::move(item));
  }
  if (items.empty()) return absl::InvalidArgumentError(absl::StrCat("--dataset ", path, " is empty"));
  return items;
}

// The flags that shape generated (random-token) conversations.
struct Workload {
  LengthDist prompt_len, output_len;
  int64_t shared_prefix_len = 0;
  int64_t num_prefixes = 1;
  int64_t turns = 1;
};

// The prefix-cache flags' errors; `parser` tells which flags were given.
absl::Status CheckWorkload(const ArgParser& parser, const Workload& w, const std::string& dataset) {
  if (w.shared_prefix_len < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shared-prefix-len must be >= 0, got ", w.shared_prefix_len));
  }
  if (w.num_prefixes < 1 || w.num_prefixes > 1000000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--num-prefixes must be in [1, 1000000], got ", w.num_prefixes));
  }
  if (w.turns < 1 || w.turns > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("--turns must be in [1, 1000], got ", w.turns));
  }
  for (const char* flag : {"shared-prefix-len", "num-prefixes", "turns"}) {
    if (!dataset.empty() && parser.WasSet(flag)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", flag, " cannot be combined with --dataset: it shapes random-token prompts"));
    }
  }
  if (w.num_prefixes > 1 && w.shared_prefix_len == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--num-prefixes ", w.num_prefixes, " needs --shared-prefix-len > 0"));
  }
  return absl::OkStatus();
}

// The conversations of every rate (so rates are compared on one workload): `requests` of them,
// cycling through `pool` (a --dataset) when it is non-empty, else generated from `w`. Turn 1's
// suffixes and output lengths are drawn from `rng` in the same order as without shared prefixes
// and turns; the prefixes and the later turns have generators of their own (seeded from `seed`),
// so adding them leaves every conversation's first suffix and output length unchanged.
absl::StatusOr<std::vector<Item>> MakeItems(const Workload& w, const std::vector<Item>& pool,
                                            int64_t requests, const v1::ModelInfo& model,
                                            uint64_t seed, std::mt19937_64& rng) {
  const int64_t context = model.context_length();
  std::uniform_int_distribution<int32_t> token(3, model.vocab_size() - 1);
  const auto draw = [&token](int64_t n, std::mt19937_64& g, std::vector<int32_t>* out) {
    for (int64_t t = 0; t < n; ++t) out->push_back(token(g));
  };
  std::vector<Item> items;
  if (!pool.empty()) {
    for (int64_t i = 0; i < requests; ++i) {
      const Item& item = pool[static_cast<size_t>(i) % pool.size()];
      const Turn& turn = item.turns[0];
      if (item.text.empty() &&
          static_cast<int64_t>(turn.tokens.size()) + turn.output_len > context) {
        return absl::InvalidArgumentError(
            absl::StrCat("a request of ", turn.tokens.size(), " + ", turn.output_len,
                         " tokens exceeds the context length ", context));
      }
      items.push_back(item);
    }
    return items;
  }
  if (w.shared_prefix_len >= context) {
    return absl::InvalidArgumentError(absl::StrCat("--shared-prefix-len ", w.shared_prefix_len,
                                                   " leaves no room in the context length ",
                                                   context));
  }
  std::mt19937_64 prefix_rng(seed * 6151 + 1), later_rng(seed * 3079 + 2);
  // Prefix i mod K for conversation i: only the first min(K, requests) are ever used.
  std::vector<std::vector<int32_t>> prefixes(
      static_cast<size_t>(std::min(w.num_prefixes, requests)));
  for (std::vector<int32_t>& prefix : prefixes) draw(w.shared_prefix_len, prefix_rng, &prefix);
  for (int64_t i = 0; i < requests; ++i) {
    Item item;
    int64_t length = w.shared_prefix_len;  // the conversation's tokens so far
    for (int64_t k = 0; k < w.turns; ++k) {
      std::mt19937_64& g = k == 0 ? rng : later_rng;
      Turn& turn = item.turns.emplace_back();
      if (k == 0) turn.tokens = prefixes[static_cast<size_t>(i) % prefixes.size()];
      const int64_t n = w.prompt_len.Draw(g);
      if (n >= context - length) {
        return absl::InvalidArgumentError(
            absl::StrCat("turn ", k + 1, "'s prompt of ", length, " + ", n,
                         " tokens leaves no room for output in the context length ", context));
      }
      draw(n, g, &turn.tokens);
      turn.output_len = w.output_len.Draw(g);
      length += n;
      if (turn.output_len > context - length) {
        return absl::InvalidArgumentError(
            absl::StrCat("a request of ", length, " + ", turn.output_len,
                         " tokens exceeds the context length ", context));
      }
      length += turn.output_len;
    }
    items.push_back(std::move(item));
  }
  return items;
}

v1::GenerateRequest ToRequest(const std::string& text, const std::vector<int32_t>& prompt,
                              int64_t output_len, const std::string& cache_salt) {
  v1::GenerateRequest r;
  if (!text.empty()) {
    r.set_text(text);
  } else {
    r.mutable_token_ids()->mutable_ids()->Assign(prompt.begin(), prompt.end());
  }
  r.mutable_sampling()->set_temperature(0);
  r.mutable_sampling()->set_max_tokens(static_cast<int32_t>(output_len));
  r.mutable_sampling()->set_ignore_eos(true);
  r.set_cache_salt(cache_salt);
  return r;
}

// Cached over all prompt tokens; 0 without any.
double HitRate(int64_t cached_prompt_tokens, int64_t prompt_tokens) {
  return prompt_tokens > 0
             ? static_cast<double>(cached_prompt_tokens) / static_cast<double>(prompt_tokens)
             : 0.0;
}

// The completed requests of one turn position (every conversation's turn k) in a run.
struct TurnResult {
  int64_t completed = 0;
  int64_t prompt_tokens = 0;         // sum of Usage.prompt_tokens
  int64_t cached_prompt_tokens = 0;  // sum of Usage.cached_prompt_tokens
  Stats ttft_ms;
};

struct RunResult {
  double rate = 0;  // conversations/s; 0 = closed loop
  int64_t concurrency = 0;
  int64_t conversations = 0;
  int64_t requests = 0;  // every turn of every conversation
  int64_t failed = 0;    // failed requests and the turns their conversations then never sent
  double seconds = 0;
  Stats ttft_ms, itl_ms, tpot_ms, e2e_ms;
  double requests_per_s = 0;
  double output_tokens_per_s = 0;
  double attainment = 0;  // share of all requests (failed ones count as misses)
  int64_t prompt_tokens = 0, cached_prompt_tokens = 0;  // over all completed requests
  std::vector<TurnResult> turns;                        // [turn - 1]
  std::string first_error;
};

struct Settings {
  double ttft_slo_ms = 0;
  double tpot_slo_ms = 0;
  uint64_t seed = 1;
  std::string cache_salt;
};

RunResult RunLoad(v1::Duet::Stub& stub, const std::vector<Item>& items, double rate,
                  int64_t concurrency, const Settings& settings) {
  RunResult out;
  out.rate = rate;
  out.concurrency = concurrency;
  out.conversations = static_cast<int64_t>(items.size());
  size_t max_turns = 0;
  for (const Item& item : items) {
    out.requests += static_cast<int64_t>(item.turns.size());
    max_turns = std::max(max_turns, item.turns.size());
  }
  out.turns.resize(max_turns);
  std::mutex mu;
  std::vector<double> ttft, itl, tpot, e2e;
  std::vector<std::vector<double>> turn_ttft(max_turns);
  int64_t met = 0, output_tokens = 0;
  ProgressBar progress(
      rate > 0 ? absl::StrCat("rate ", rate, "/s") : absl::StrCat("x", concurrency),
      static_cast<uint64_t>(out.requests), ProgressBar::Items{"requests"});
  auto run_conversation = [&](const Item& item) {
    std::vector<int32_t> prompt;
    for (size_t k = 0; k < item.turns.size(); ++k) {
      const Turn& turn = item.turns[k];
      prompt.insert(prompt.end(), turn.tokens.begin(), turn.tokens.end());
      const cluster::GenerateResult r = cluster::Generate(
          stub, ToRequest(item.text, prompt, turn.output_len, settings.cache_salt));
      std::lock_guard<std::mutex> lock(mu);
      if (!r.status.ok() || r.tokens.empty()) {
        // The conversation cannot go on without this turn's output.
        const int64_t lost = static_cast<int64_t>(item.turns.size() - k);
        out.failed += lost;
        progress.Add(static_cast<uint64_t>(lost));
        if (out.first_error.empty()) out.first_error = r.status.ToString();
        return;
      }
      progress.Add(1);
      output_tokens += static_cast<int64_t>(r.tokens.size());
      ttft.push_back(r.ttft_ms);
      e2e.push_back(r.total_ms);
      for (size_t i = 1; i < r.token_ms.size(); ++i) {
        itl.push_back(r.token_ms[i] - r.token_ms[i - 1]);
      }
      const double per_token =
          r.tokens.size() > 1 ? (r.total_ms - r.ttft_ms) / static_cast<double>(r.tokens.size() - 1)
                              : 0.0;
      tpot.push_back(per_token);
      if (r.ttft_ms <= settings.ttft_slo_ms && per_token <= settings.tpot_slo_ms) ++met;
      TurnResult& t = out.turns[k];
      ++t.completed;
      t.prompt_tokens += r.usage.prompt_tokens();
      t.cached_prompt_tokens += r.usage.cached_prompt_tokens();
      turn_ttft[k].push_back(r.ttft_ms);
      prompt.insert(prompt.end(), r.tokens.begin(), r.tokens.end());
    }
  };
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  if (rate > 0) {
    // Open loop: Poisson arrivals, each conversation on its own thread from its arrival time.
    std::mt19937_64 rng(settings.seed * 7919 + static_cast<uint64_t>(rate * 1000));
    std::exponential_distribution<double> gap(rate);
    double at = 0;
    for (const Item& item : items) {
      std::this_thread::sleep_until(start + std::chrono::duration<double>(at));
      threads.emplace_back([&run_conversation, &item] { run_conversation(item); });
      at += gap(rng);
    }
  } else {
    std::atomic<size_t> next{0};
    for (int64_t c = 0; c < concurrency; ++c) {
      threads.emplace_back([&] {
        for (size_t i; (i = next.fetch_add(1)) < items.size();) run_conversation(items[i]);
      });
    }
  }
  for (std::thread& t : threads) t.join();
  progress.Finish();
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.ttft_ms = Summarize(ttft);
  out.itl_ms = Summarize(itl);
  out.tpot_ms = Summarize(tpot);
  out.e2e_ms = Summarize(e2e);
  out.requests_per_s = static_cast<double>(out.requests - out.failed) / out.seconds;
  out.output_tokens_per_s = static_cast<double>(output_tokens) / out.seconds;
  out.attainment = static_cast<double>(met) / static_cast<double>(out.requests);
  for (size_t k = 0; k < max_turns; ++k) {
    out.turns[k].ttft_ms = Summarize(std::move(turn_ttft[k]));
    out.prompt_tokens += out.turns[k].prompt_tokens;
    out.cached_prompt_tokens += out.turns[k].cached_prompt_tokens;
  }
  return out;
}

std::string TurnJson(size_t k, const TurnResult& t) {
  return absl::StrCat(
      "{\"turn\": ", k + 1, ", \"completed\": ", t.completed,
      ", \"prompt_tokens\": ", t.prompt_tokens,
      ", \"cached_prompt_tokens\": ", t.cached_prompt_tokens, ", \"prefix_cache_hit_rate\": ",
      JsonFloat(static_cast<float>(HitRate(t.cached_prompt_tokens, t.prompt_tokens))),
      ", \"ttft_ms\": ", StatsJson(t.ttft_ms), "}");
}

std::string RunJson(const RunResult& r) {
  std::vector<std::string> turns;
  for (size_t k = 0; k < r.turns.size(); ++k) turns.push_back(TurnJson(k, r.turns[k]));
  return absl::StrCat(
      "  {\"rate\": ", JsonFloat(static_cast<float>(r.rate)), ", \"concurrency\": ", r.concurrency,
      ", \"conversations\": ", r.conversations, ", \"requests\": ", r.requests,
      ", \"failed\": ", r.failed, ", \"seconds\": ", JsonFloat(static_cast<float>(r.seconds)),
      ", \"ttft_ms\": ", StatsJson(r.ttft_ms), ", \"itl_ms\": ", StatsJson(r.itl_ms),
      ", \"tpot_ms\": ", StatsJson(r.tpot_ms), ", \"e2e_ms\": ", StatsJson(r.e2e_ms),
      ", \"requests_per_s\": ", JsonFloat(static_cast<float>(r.requests_per_s)),
      ", \"output_tokens_per_s\": ", JsonFloat(static_cast<float>(r.output_tokens_per_s)),
      ", \"slo_attainment\": ", JsonFloat(static_cast<float>(r.attainment)),
      ", \"prompt_tokens\": ", r.prompt_tokens,
      ", \"cached_prompt_tokens\": ", r.cached_prompt_tokens, ", \"prefix_cache_hit_rate\": ",
      JsonFloat(static_cast<float>(HitRate(r.cached_prompt_tokens, r.prompt_tokens))),
      ",\n   \"per_turn\": [", absl::StrJoin(turns, ", "), "]}");
}

// The plain-text table on stdout; with more than one turn, a line per turn under each run.
void PrintTable(const std::vector<RunResult>& runs) {
  std::printf("%-8s %5s %7s %9s %9s %9s %9s %9s %9s %9s %8s %9s %7s %9s\n", "rate", "conc",
              "failed", "ttft_mean", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "tpot_p99",
              "e2e_p99", "req/s", "out_tok/s", "slo_ok", "cache_hit");
  for (const RunResult& r : runs) {
    std::printf(
        "%-8.3g %5lld %7lld %9.1f %9.1f %9.1f %9.2f %9.2f %9.2f %9.1f %8.2f %9.1f %6.0f%% "
        "%8.1f%%\n",
        r.rate, static_cast<long long>(r.concurrency), static_cast<long long>(r.failed),
        r.ttft_ms.mean, r.ttft_ms.p50, r.ttft_ms.p99, r.itl_ms.p50, r.itl_ms.p99, r.tpot_ms.p99,
        r.e2e_ms.p99, r.requests_per_s, r.output_tokens_per_s, 100 * r.attainment,
        100 * HitRate(r.cached_prompt_tokens, r.prompt_tokens));
    for (size_t k = 0; r.turns.size() > 1 && k < r.turns.size(); ++k) {
      const TurnResult& t = r.turns[k];
      std::printf(
          "  turn %zu: ttft_mean %.1f ms, ttft_p99 %.1f ms, %lld of %lld prompt tokens "
          "cached (%.1f%%)\n",
          k + 1, t.ttft_ms.mean, t.ttft_ms.p99, static_cast<long long>(t.cached_prompt_tokens),
          static_cast<long long>(t.prompt_tokens),
          100 * HitRate(t.cached_prompt_tokens, t.prompt_tokens));
    }
  }
}

}  // namespace

int RunLoadgen(const Args& args) {
  std::string address, dataset, json_path, rates_text, cache_salt, prompt_len_text = "128",
                                                                   output_len_text = "32";
  int64_t concurrency = 0, requests = 32, seed = 1, warmup = 0;
  double ttft_slo_ms = 1000, tpot_slo_ms = 100;
  bool goodput = false;
  Workload workload;
  ArgParser parser(kCmd);
  parser.AddString("addr", &address, "the router's HOST:PORT", true);
  parser.AddString("rate", &rates_text,
                   "Poisson arrival rate(s), conversations/s, comma-separated (e.g. 1,2,4)");
  parser.AddInt("concurrency", &concurrency, "closed loop of C clients instead of --rate");
  parser.AddInt("requests", &requests, "requests (conversations) per rate (default 32)");
  parser.AddString("prompt-len", &prompt_len_text,
                   "prompt tokens after the shared prefix, per turn: N or A:B (default 128)");
  parser.AddString("output-len", &output_len_text, "output tokens: N or A:B (default 32)");
  parser.AddString("dataset", &dataset, "JSONL: {\"prompt\" or \"prompt_len\", \"output_len\"}");
  parser.AddInt("shared-prefix-len", &workload.shared_prefix_len,
                "tokens of a shared prefix before every prompt (default 0)");
  parser.AddInt("num-prefixes", &workload.num_prefixes,
                "distinct shared prefixes; conversation i uses prefix i mod K (default 1)");
  parser.AddInt("turns", &workload.turns,
                "turns per conversation, each extending the last turn's prompt and output "
                "(default 1)");
  parser.AddString("cache-salt", &cache_salt, "GenerateRequest.cache_salt of every request");
  parser.AddInt("warmup", &warmup,
                "send N requests (same shared prefixes, other suffixes) one at a time first, "
                "unmeasured (default 0)");
  parser.AddDouble("ttft-slo-ms", &ttft_slo_ms, "TTFT SLO for goodput, ms (default 1000)");
  parser.AddDouble("tpot-slo-ms", &tpot_slo_ms,
                   "time-per-output-token SLO for goodput, ms (default 100)");
  parser.AddBool("goodput", &goodput,
                 "search the highest rate meeting the SLOs for 90% of requests, from --rate");
  parser.AddInt("seed", &seed, "seed of the prompts, lengths and arrivals (default 1)");
  parser.AddString("json", &json_path, "also write the results as JSON to this file");
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;
  std::vector<double> rates;
  for (absl::string_view r : absl::StrSplit(rates_text, ',', absl::SkipEmpty())) {
    double v = 0;
    if (!absl::SimpleAtod(r, &v) || !(v > 0) || v > 1e6) {
      return UsageError(kCmd, absl::StrCat("--rate values must be > 0, got '", r, "'"));
    }
    rates.push_back(v);
  }
  if (rates.empty() == (concurrency == 0)) {
    return UsageError(kCmd, "give exactly one of --rate and --concurrency");
  }
  if (warmup < 0 || warmup > 100000) {
    return UsageError(kCmd, absl::StrCat("--warmup must be in [0, 100000], got ", warmup));
  }
  if (concurrency < 0 || concurrency > 4096) {
    return UsageError(kCmd, absl::StrCat("--concurrency must be in [1, 4096], got ", concurrency));
  }
  if (goodput && rates.size() != 1) return UsageError(kCmd, "--goodput needs one starting --rate");
  if (requests < 1 || requests > 1000000) {
    return UsageError(kCmd, absl::StrCat("--requests must be >= 1, got ", requests));
  }
  if (!(ttft_slo_ms > 0) || !(tpot_slo_ms > 0)) {
    return UsageError(kCmd, "--ttft-slo-ms and --tpot-slo-ms must be > 0");
  }
  absl::StatusOr<LengthDist> prompt_len = ParseLength("prompt-len", prompt_len_text);
  if (!prompt_len.ok()) return UsageError(kCmd, std::string(prompt_len.status().message()));
  absl::StatusOr<LengthDist> output_len = ParseLength("output-len", output_len_text);
  if (!output_len.ok()) return UsageError(kCmd, std::string(output_len.status().message()));
  workload.prompt_len = *prompt_len;
  workload.output_len = *output_len;
  if (absl::Status s = CheckWorkload(parser, workload, dataset); !s.ok()) {
    return UsageError(kCmd, std::string(s.message()));
  }

  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rpc::CreateChannel(address);
  if (!channel.ok()) return UsageError(kCmd, absl::StrCat("--addr: ", channel.status().message()));
  auto stub = v1::Duet::NewStub(*channel);
  v1::ListModelsResponse models;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const grpc::Status s = stub->ListModels(&context, v1::ListModelsRequest(), &models);
    if (!s.ok() || models.models().empty()) {
      return Fail(kCmd, absl::UnavailableError(absl::StrCat(
                            "cannot list the models at ", address, ": ", s.error_message())));
    }
  }
  const v1::ModelInfo& model = models.models(0);

  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  std::vector<Item> pool;
  if (!dataset.empty()) {
    absl::StatusOr<std::vector<Item>> loaded = LoadDataset(dataset, model.vocab_size(), rng);
    if (!loaded.ok()) return Fail(kCmd, loaded.status());
    pool = *std::move(loaded);
  }
  absl::StatusOr<std::vector<Item>> items =
      MakeItems(workload, pool, requests, model, static_cast<uint64_t>(seed), rng);
  if (!items.ok()) return UsageError(kCmd, std::string(items.status().message()));

  const Settings settings{ttft_slo_ms, tpot_slo_ms, static_cast<uint64_t>(seed), cache_salt};
  if (warmup > 0) {
    // As vLLM's benchmark_prefix_caching warms its cache: conversations with the same shared
    // prefixes (the prefix generator depends on the seed only) and suffixes of their own.
    std::mt19937_64 warm_rng(static_cast<uint64_t>(seed) ^ 0x9e3779b97f4a7c15ULL);
    absl::StatusOr<std::vector<Item>> warm =
        MakeItems(workload, pool, warmup, model, static_cast<uint64_t>(seed), warm_rng);
    if (!warm.ok()) return UsageError(kCmd, std::string(warm.status().message()));
    const RunResult w = RunLoad(*stub, *warm, 0, 1, settings);
    if (w.failed > 0) {
      return Fail(kCmd, absl::UnavailableError(
                            absl::StrCat("a warm-up request failed: ", w.first_error)));
    }
    std::fprintf(stderr, "%s: warm-up: %lld requests, TTFT mean %.1f ms (not counted)\n", kCmd,
                 static_cast<long long>(w.requests), w.ttft_ms.mean);
  }
  std::vector<RunResult> runs;
  auto run = [&](double rate) {
    runs.push_back(RunLoad(*stub, *items, rate, concurrency, settings));
    const RunResult& r = runs.back();
    std::fprintf(stderr,
                 "%s: rate %.3g/s: attainment %.0f%%, TTFT mean %.1f ms, p99 %.1f ms, TPOT p99 "
                 "%.2f ms, prefix cache hits %.1f%%%s%s\n",
                 kCmd, r.rate, 100 * r.attainment, r.ttft_ms.mean, r.ttft_ms.p99, r.tpot_ms.p99,
                 100 * HitRate(r.cached_prompt_tokens, r.prompt_tokens),
                 r.failed > 0 ? ", first error: " : "", r.first_error.c_str());
    return r.attainment >= kAttainmentTarget;
  };
  double goodput_rate = 0;
  if (concurrency > 0) {
    run(0);
  } else if (!goodput) {
    for (double rate : rates) {
      if (run(rate)) goodput_rate = std::max(goodput_rate, rate);
    }
  } else {
    // Double until the SLOs fail for > 10% of requests, then bisect twice.
    double good = 0, bad = 0;
    for (double rate = rates[0]; rate < 1e6; rate *= 2) {
      if (!run(rate)) {
        bad = rate;
        break;
      }
      good = rate;
      if (runs.size() >= 8) break;
    }
    for (int i = 0; i < 2 && bad > 0; ++i) {
      const double mid = good > 0 ? (good + bad) / 2 : bad / 2;
      if (run(mid)) {
        good = mid;
      } else {
        bad = mid;
      }
    }
    goodput_rate = good;
  }

  PrintTable(runs);
  if (concurrency == 0) {
    std::printf("goodput: %.3g %s/s (TTFT <= %g ms and TPOT <= %g ms for >= 90%%)\n", goodput_rate,
                workload.turns > 1 ? "conversations" : "requests", ttft_slo_ms, tpot_slo_ms);
  }
  if (!json_path.empty()) {
    std::vector<std::string> rows;
    for (const RunResult& r : runs) rows.push_back(RunJson(r));
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    const std::string json = absl::StrCat(
        "{\n \"bench\": \"loadgen\",\n \"machine\": {\"host\": ", JsonString(host),
        ", \"cpus\": ", std::thread::hardware_concurrency(),
        "},\n \"target\": ", JsonString(address),
        ",\n \"model\": {\"id\": ", JsonString(model.id()),
        ", \"architecture\": ", JsonString(model.architecture()), "},\n \"settings\": {",
        "\"requests\": ", requests, ", \"prompt_len\": ", JsonString(prompt_len_text),
        ", \"output_len\": ", JsonString(output_len_text), ", \"dataset\": ", JsonString(dataset),
        ", \"ttft_slo_ms\": ", JsonFloat(static_cast<float>(ttft_slo_ms)),
        ", \"tpot_slo_ms\": ", JsonFloat(static_cast<float>(tpot_slo_ms)), ", \"seed\": ", seed,
        ", \"shared_prefix_len\": ", workload.shared_prefix_len,
        ", \"num_prefixes\": ", workload.num_prefixes, ", \"turns\": ", workload.turns,
        ", \"cache_salt\": ", JsonString(cache_salt), ", \"warmup\": ", warmup,
        "},\n \"runs\": [\n",
        absl::StrJoin(rows, ",\n"),
        "\n ],\n \"goodput_requests_per_s\": ", JsonFloat(static_cast<float>(goodput_rate)),
        "\n}\n");
    std::ofstream out(json_path, std::ios::binary | std::ios::trunc);
    out << json;
    if (!out) return Fail(kCmd, absl::UnavailableError(absl::StrCat("cannot write ", json_path)));
  }
  int64_t failed = 0;
  for (const RunResult& r : runs) failed += r.failed;
  return failed == 0 ? 0 : kExitRuntimeError;
}

}  // namespace duet::cli
