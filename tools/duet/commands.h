// The `duet` subcommands. Each takes its own arguments (after the subcommand name) and
// returns the process exit code; errors are printed as one line on stderr.
#ifndef DUET_TOOLS_DUET_COMMANDS_H_
#define DUET_TOOLS_DUET_COMMANDS_H_

#include <string>
#include <vector>

namespace duet::cli {

using Args = std::vector<std::string>;

int RunInspect(const Args& args);
int RunTokenize(const Args& args);
int RunGenerate(const Args& args);
int RunLogits(const Args& args);
int RunBench(const Args& args);
int RunBenchSpec(const Args& args);
int RunMakeModel(const Args& args);
int RunKvCalc(const Args& args);
int RunQuantCalc(const Args& args);
int RunCluster(const Args& args);
int RunClient(const Args& args);
int RunLoadgen(const Args& args);
// `duet bench --cluster` (cmd_bench_cluster.cc).
int RunClusterBench(const Args& args);

}  // namespace duet::cli

#endif  // DUET_TOOLS_DUET_COMMANDS_H_
