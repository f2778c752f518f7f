// duet-decode-node --model FILE [--port N] [--host H] [--router HOST:PORT] [--node-id ID]
//   [--role decode|colocated] [--backend vulkan|cpu] [--kv-dtype f32|f16|fp8]
//   [--kv-blocks N | --kv-pool-mb N] [--config FILE] [--log-level L] ...  (--help lists all)
//
// Serves duet.v1.DecodeService (and Run with --role colocated). Prints "listening on HOST:PORT"
// first on stdout; drains and exits 0 on SIGTERM (node/node_runtime.h).
#include <memory>

#include "decode_node/decode_node.h"
#include "node/node_runtime.h"

int main(int argc, char** argv) {
  using duet::node::NodeHooks;
  return duet::node::RunNodeMain(
      "duet-decode-node", duet::v1::NODE_ROLE_DECODE,
      {duet::v1::NODE_ROLE_DECODE, duet::v1::NODE_ROLE_COLOCATED}, argc, argv,
      [](const duet::node::NodeOptions& options, const std::string& node_id,
         const duet::node::NodeModel& model) -> absl::StatusOr<NodeHooks> {
        duet::decode::DecodeNodeOptions decode_options;
        decode_options.role = options.role == duet::v1::NODE_ROLE_COLOCATED
                                  ? duet::sched::Role::kColocated
                                  : duet::sched::Role::kDecode;
        decode_options.node_id = node_id;
        decode_options.model_id = model.model_id;
        decode_options.max_num_seqs = options.max_num_seqs;
        decode_options.max_num_batched_tokens = options.max_num_batched_tokens;
        decode_options.prefill_chunk_tokens = options.prefill_chunk_tokens;
        decode_options.enable_prefix_caching = options.enable_prefix_caching;
        decode_options.test_step_delay = absl::Milliseconds(options.test_decode_step_delay_ms);
        if (options.histograms != nullptr) {
          decode_options.decode_batch_size = options.histograms->decode_batch_size;
        }
        if (options.speculation.method != "off") {
          absl::StatusOr<std::unique_ptr<duet::node::Speculator>> speculator =
              duet::node::Speculator::Create(options.speculation, options.backend, model.file,
                                             *model.engine, duet::node::EngineOptionsFor(options));
          if (!speculator.ok()) return speculator.status();
          decode_options.speculator = std::move(*speculator);
        }
        absl::StatusOr<std::unique_ptr<duet::decode::DecodeNode>> node =
            duet::decode::DecodeNode::Create(decode_options, model.engine.get(),
                                             model.tokenizer.get());
        if (!node.ok()) return node.status();
        return duet::node::HooksFor(std::shared_ptr<duet::decode::DecodeNode>(std::move(*node)));
      });
}
