// `duet`: one binary for everything a person does by hand.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tools/duet/commands.h"

namespace {

struct Subcommand {
  const char* name;
  int (*run)(const duet::cli::Args&);
  const char* help;
};

constexpr Subcommand kSubcommands[] = {
    {"inspect", duet::cli::RunInspect, "show a GGUF model's architecture, shapes and memory"},
    {"tokenize", duet::cli::RunTokenize, "tokenize text with a model's tokenizer"},
    {"generate", duet::cli::RunGenerate, "generate text from a prompt"},
    {"logits", duet::cli::RunLogits, "print per-position top logits as JSON"},
    {"bench", duet::cli::RunBench, "prefill and decode throughput over prompt lengths and batches"},
    {"bench-spec", duet::cli::RunBenchSpec, "decode throughput with speculative decoding vs without"},
    {"make-model", duet::cli::RunMakeModel, "write a synthetic GGUF model with random weights"},
    {"kv-calc", duet::cli::RunKvCalc, "KV cache memory calculator"},
    {"quant-calc", duet::cli::RunQuantCalc, "weight memory across quantization types"},
    {"cluster", duet::cli::RunCluster, "start a local cluster (router + nodes) as processes"},
    {"client", duet::cli::RunClient, "stream a completion from a running cluster"},
    {"loadgen", duet::cli::RunLoadgen, "load generator: latency percentiles, throughput, goodput"},
};

void PrintUsage(FILE* out) {
  std::fprintf(out, "usage: duet <command> [args]   ('duet <command> --help' for details)\n\n");
  for (const Subcommand& s : kSubcommands) std::fprintf(out, "  %-12s %s\n", s.name, s.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintUsage(stdout);
    return 0;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const Subcommand& s : kSubcommands) {
    if (name == s.name) return s.run(args);
  }
  std::fprintf(stderr, "duet: unknown command '%s' (run 'duet --help' for the list)\n",
               name.c_str());
  return 2;
}
