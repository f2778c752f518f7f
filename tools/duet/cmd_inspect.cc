// duet inspect FILE.gguf [--metadata] [--tensors]
//
// Prints the file's layout, the model config, the tokenizer, and parameter / memory totals
// by tensor type. A file whose architecture Duet cannot run still shows its GGUF contents,
// then fails with the reason.
#include <cstdio>
#include <map>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/base/format.h"
#include "common/model/model_config.h"
#include "common/model/tokenizer.h"
#include "tools/duet/cli_util.h"

namespace duet::cli {
namespace {

void PrintConfig(const ModelConfig& c) {
  std::printf("model:\n");
  std::printf("  architecture     %s%s\n", c.architecture_name.c_str(),
              c.name.empty() ? "" : absl::StrFormat(" (%s)", c.name).c_str());
  std::printf("  hidden           %lld\n", static_cast<long long>(c.hidden_dim));
  std::printf("  layers           %lld\n", static_cast<long long>(c.num_layers));
  std::printf("  heads            %lld query, %lld key/value (%s), head dim %lld\n",
              static_cast<long long>(c.num_heads), static_cast<long long>(c.num_kv_heads),
              c.num_kv_heads == c.num_heads ? "MHA" : (c.num_kv_heads == 1 ? "MQA" : "GQA"),
              static_cast<long long>(c.head_dim));
  std::printf("  ffn              %lld (SwiGLU)\n", static_cast<long long>(c.ffn_dim));
  std::printf("  vocab            %lld\n", static_cast<long long>(c.vocab_size));
  std::printf("  context          %lld\n", static_cast<long long>(c.context_length));
  std::printf("  rms norm eps     %g\n", c.rms_norm_eps);
  std::string scaling = "none";
  if (c.rope_scaling == RopeScalingType::kLinear) {
    scaling = absl::StrFormat("linear x%g", c.rope_scaling_factor);
  }
  if (c.has_rope_freq_factors) scaling += " + per-frequency factors (rope_freqs)";
  std::printf("  rope             base %g, %lld dims, %s layout, scaling %s\n", c.rope_theta,
              static_cast<long long>(c.rope_dim),
              c.rope_layout == RopeLayout::kNeox ? "neox" : "normal", scaling.c_str());
  std::printf("  output           %s%s\n", c.tied_embeddings ? "tied to token_embd" : "separate",
              c.qkv_bias ? ", QKV bias" : "");
  const int64_t kv_bytes_f16 = 2 * c.num_layers * c.kv_dim() * 2;
  std::printf("  KV per token     %s at f16 (%s at 4096 tokens)\n",
              FormatBytes(kv_bytes_f16).c_str(), FormatBytes(kv_bytes_f16 * 4096).c_str());
}

}  // namespace

int RunInspect(const Args& args) {
  const std::string kCmd = "duet inspect";
  std::string path;
  bool show_metadata = false;
  bool show_tensors = false;
  ArgParser parser(kCmd);
  parser.AddPositional("FILE.gguf", &path, "GGUF file to inspect");
  parser.AddBool("metadata", &show_metadata, "print every metadata key");
  parser.AddBool("tensors", &show_tensors, "print every tensor");
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;

  absl::StatusOr<std::shared_ptr<const GgufFile>> opened = OpenModelFile(path);
  if (!opened.ok()) return Fail(kCmd, opened.status());
  const GgufFile& file = **opened;

  std::printf("file:              %s\n", path.c_str());
  std::printf("  size             %s\n", FormatBytes(file.file_size()).c_str());
  std::printf("  gguf             version %u, alignment %llu, %zu metadata keys, %zu tensors\n",
              file.version(), static_cast<unsigned long long>(file.alignment()),
              file.metadata().size(), file.tensors().size());
  if (show_metadata) {
    for (const auto& [key, value] : file.metadata()) {
      std::printf("  %-40s %s\n", key.c_str(), value.DebugString().c_str());
    }
  }

  struct TypeTotal {
    int64_t tensors = 0;
    int64_t params = 0;
    uint64_t bytes = 0;
  };
  std::map<std::string, TypeTotal> by_type;
  TypeTotal total;
  for (const GgufTensorInfo& t : file.tensors()) {
    TypeTotal& tt = by_type[std::string(GgmlTypeName(t.type))];
    for (TypeTotal* acc : {&tt, &total}) {
      acc->tensors += 1;
      acc->params += t.num_elements();
      acc->bytes += t.num_bytes;
    }
    if (show_tensors) {
      std::printf("  %-32s %-6s [%s] %s\n", t.name.c_str(), std::string(GgmlTypeName(t.type)).c_str(),
                  absl::StrJoin(t.shape, ", ").c_str(), FormatBytes(t.num_bytes).c_str());
    }
  }

  if (const GgufValue* model = file.Find("tokenizer.ggml.model"); model != nullptr) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(file);
    if (tokenizer.ok()) {
      const Tokenizer& tok = **tokenizer;
      std::printf("tokenizer:\n  %s (%s), %d tokens, pre-tokenizer %s, BOS %d%s, EOS %d%s\n",
                  tok.kind() == TokenizerKind::kSpm ? "sentencepiece" : "byte-level BPE",
                  model->DebugString().c_str(), tok.vocab_size(), std::string(tok.pre()).c_str(),
                  tok.bos_id(), tok.add_bos() ? " (added)" : "", tok.eos_id(),
                  tok.add_eos() ? " (added)" : "");
    } else {
      std::printf("tokenizer:\n  unusable: %s\n", std::string(tokenizer.status().message()).c_str());
    }
  }

  if (!file.tensors().empty()) {
    std::printf("weights:\n");
    for (const auto& [name, tt] : by_type) {
      std::printf("  %-8s %4lld tensors %10s params %12s\n", name.c_str(),
                  static_cast<long long>(tt.tensors), FormatCount(tt.params).c_str(),
                  FormatBytes(tt.bytes).c_str());
    }
    std::printf("  total    %4lld tensors %10s params %12s (%.2f bits per weight)\n",
                static_cast<long long>(total.tensors), FormatCount(total.params).c_str(),
                FormatBytes(total.bytes).c_str(),
                total.params ? 8.0 * static_cast<double>(total.bytes) / total.params : 0.0);
  }

  absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(file);
  if (!config.ok()) return Fail(kCmd, config.status());
  PrintConfig(*config);
  return 0;
}

}  // namespace duet::cli
