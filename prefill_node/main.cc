// duet-prefill-node --model FILE [--port N] [--host H] [--router HOST:PORT] [--node-id ID]
//   [--backend vulkan|cpu] [--kv-dtype f32|f16|fp8] [--kv-blocks N | --kv-pool-mb N]
//   [--layers-per-group N] [--max-chunk-bytes N] [--config FILE] [--log-level L] ...
//   (--help lists all)
//
// Serves duet.v1.PrefillService. Prints "listening on HOST:PORT" first on stdout; drains
// (finishing in-flight prefills and their KV transfers) and exits 0 on SIGTERM
// (node/node_runtime.h).
#include <cstdio>
#include <string>
#include <vector>

#include "node/node_model.h"
#include "node/node_options.h"
#include "node/node_runtime.h"
#include "prefill_node/prefill_node.h"

int main(int argc, char** argv) {
  duet::node::BlockTerminationSignals();
  const std::string program = "duet-prefill-node";
  const std::vector<std::string> args(argv + 1, argv + argc);
  bool help = false;
  std::string usage;
  absl::StatusOr<duet::node::NodeOptions> options =
      duet::node::ParseNodeOptions(program, duet::v1::NODE_ROLE_PREFILL, {}, args, &help, &usage);
  if (!options.ok()) {
    std::fprintf(stderr, "%s: %s (--help lists the flags)\n", program.c_str(),
                 std::string(options.status().message()).c_str());
    return 2;
  }
  if (help) {
    std::printf("%s", usage.c_str());
    return 0;
  }
  if (absl::Status s = duet::node::InitLogging(options->log_level); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), std::string(s.message()).c_str());
    return 2;
  }
  absl::StatusOr<duet::node::NodeModel> model =
      duet::node::LoadNodeModel(options->model_path, options->model_id, options->backend,
                                duet::node::EngineOptionsFor(*options));
  if (!model.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), model.status().ToString().c_str());
    return 1;
  }
  const std::string node_id =
      options->node_id.empty() ? duet::node::DefaultNodeId(options->role) : options->node_id;

  duet::prefill::PrefillNodeOptions prefill_options;
  prefill_options.node_id = node_id;
  prefill_options.model_id = model->model_id;
  prefill_options.max_num_seqs = options->max_num_seqs;
  prefill_options.max_num_batched_tokens = options->max_num_batched_tokens;
  prefill_options.prefill_chunk_tokens = options->prefill_chunk_tokens;
  prefill_options.layers_per_group = options->layers_per_group;
  prefill_options.max_chunk_bytes = options->max_chunk_bytes;
  absl::StatusOr<std::unique_ptr<duet::prefill::PrefillNode>> node =
      duet::prefill::PrefillNode::Create(prefill_options, model->engine.get(),
                                         model->tokenizer.get());
  if (!node.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), node.status().ToString().c_str());
    return 1;
  }
  duet::prefill::PrefillNode* n = node->get();
  duet::node::NodeHooks hooks;
  hooks.service = n;
  hooks.total_kv_blocks = n->total_kv_blocks();
  hooks.block_size = n->block_size();
  hooks.kv_dtype = n->kv_dtype();
  hooks.load = [n] { return n->Load(); };
  hooks.start_drain = [n] { n->StartDrain(); };
  hooks.await_drained = [n](absl::Duration timeout) { return n->AwaitDrained(timeout); };
  hooks.stop = [n] { n->Stop(); };
  return duet::node::ServeNode(*options, node_id, hooks);
}
