// duet-prefill-node --model FILE [--port N] [--host H] [--router HOST:PORT] [--node-id ID]
//   [--backend vulkan|cpu] [--kv-dtype f32|f16|fp8] [--kv-blocks N | --kv-pool-mb N]
//   [--layers-per-group N] [--max-chunk-bytes N] [--config FILE] [--log-level L] ...
//   (--help lists all)
//
// Serves duet.v1.PrefillService. Prints "listening on HOST:PORT" first on stdout; drains
// (finishing in-flight prefills and their KV transfers) and exits 0 on SIGTERM
// (node/node_runtime.h).
#include <memory>

#include "node/node_runtime.h"
#include "prefill_node/prefill_node.h"

int main(int argc, char** argv) {
  using duet::node::NodeHooks;
  return duet::node::RunNodeMain(
      "duet-prefill-node", duet::v1::NODE_ROLE_PREFILL, {}, argc, argv,
      [](const duet::node::NodeOptions& options, const std::string& node_id,
         const duet::node::NodeModel& model) -> absl::StatusOr<NodeHooks> {
        duet::prefill::PrefillNodeOptions prefill_options;
        prefill_options.node_id = node_id;
        prefill_options.model_id = model.model_id;
        prefill_options.max_num_seqs = options.max_num_seqs;
        prefill_options.max_num_batched_tokens = options.max_num_batched_tokens;
        prefill_options.prefill_chunk_tokens = options.prefill_chunk_tokens;
        prefill_options.layers_per_group = options.layers_per_group;
        prefill_options.max_chunk_bytes = options.max_chunk_bytes;
        prefill_options.test_corrupt_kv_chunks = options.test_corrupt_kv_chunks;
        prefill_options.enable_prefix_caching = options.enable_prefix_caching;
        if (options.histograms != nullptr) {
          prefill_options.kv_transfer_latency = options.histograms->kv_transfer_latency;
          prefill_options.prefill_batch_tokens = options.histograms->prefill_batch_tokens;
        }
        absl::StatusOr<std::unique_ptr<duet::prefill::PrefillNode>> node =
            duet::prefill::PrefillNode::Create(prefill_options, model.engine.get(),
                                               model.tokenizer.get());
        if (!node.ok()) return node.status();
        return duet::node::HooksFor(std::shared_ptr<duet::prefill::PrefillNode>(std::move(*node)));
      });
}
