// Synthetic GGUF models: a named shape's full llama.cpp layout and metadata, filled with
// seeded random weights, for tests and benchmarks without downloading real models.
//
// The file is what llama.cpp's converter would write for a model of that shape: the
// metadata keys model_config.h reads, tensors named and shaped as llama.cpp names them, norms,
// biases and rope_freqs in f32 and every 2-D weight (token_embd and output included) in the
// chosen type. Weights are generated and encoded tensor by tensor (row by row) inside the
// writer's fill callbacks, so writing a 1B model never holds it in memory.
//
// Initialization (chosen so activations stay O(1) through every layer of a pre-norm
// transformer and logits are neither flat nor one-hot; see synthetic_model_test.cc):
//   token_embd                 ~ N(0, 1) untied; N(0, 1/sqrt(hidden_dim)) tied (a unit
//                                embedding would dominate its own logit: every model would
//                                just repeat its input)
//   attn_q/k/v, ffn_gate/up    ~ N(0, 1/sqrt(fan_in))
//   attn_output, ffn_down      ~ N(0, 1/sqrt(fan_in) / sqrt(num_layers))   (residual branches:
//                                together they add ~1 to the residual stream's variance)
//   attn_norm, ffn_norm        ~ 1 + N(0, 0.05)
//   output_norm                ~ 2 * (1 + N(0, 0.05)): logits' std ~2
//   output (untied)            ~ N(0, 1/sqrt(hidden_dim))
// So the residual stream's RMS ends near 1 (untied: starts at 1, ends near 1.4; tied: grows
// from 1/sqrt(hidden_dim) to ~1, as trained models' streams grow with depth).
//   attn_{q,k,v}.bias          ~ N(0, 0.2)
//   rope_freqs                 Llama3RopeFreqFactors(shape)
// "N" is an Irwin-Hall approximation of the normal (sum of four 16-bit uniforms, bounded at
// +-3.46 sigma), drawn from a stream keyed by (seed, tensor name, row): the same seed gives a
// byte-identical file, whatever the generation order or thread count.
#ifndef DUET_COMMON_MODEL_SYNTHETIC_MODEL_H_
#define DUET_COMMON_MODEL_SYNTHETIC_MODEL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/ggml_types.h"
#include "common/model/gguf.h"
#include "common/model/gguf_writer.h"
#include "common/model/shapes.h"

namespace duet {

struct SyntheticModelOptions {
  ModelShape shape;
  // Type of every 2-D weight: kF32, kF16, kQ8_0 or kQ4_0.
  GgmlType weight_type = GgmlType::kF16;
  // Optional vocab GGUF (e.g. ggml-vocab-llama-spm.gguf): every tokenizer.* key is copied and
  // the vocab size becomes its token count. Empty: the built-in byte-level vocab, padded
  // with <unused_N> tokens to shape.vocab_size.
  std::string vocab_path;
  uint64_t seed = 0;
};

// One tensor of the file with its storage type.
struct PlannedTensor {
  TensorSpec spec;
  GgmlType type = GgmlType::kF32;
  uint64_t num_bytes = 0;
};

// Everything about the file except the weight values.
struct SyntheticModelPlan {
  ModelShape shape;  // options.shape with vocab_size resolved (from the vocab file, if any).
  std::vector<std::pair<std::string, GgufValue>> metadata;  // In file order.
  std::vector<PlannedTensor> tensors;                       // In file order.
};

// llama.cpp's general.file_type (llama_ftype) for a weight type: F32 0, F16 1, Q4_0 2, Q8_0 7.
// INVALID_ARGUMENT for types synthetic models do not support.
absl::StatusOr<uint32_t> FileTypeForWeightType(GgmlType weight_type);

// The built-in vocabulary's tokenizer.* metadata for `vocab_size` tokens: <unk> (id 0,
// unknown), <s> (1, control, BOS), </s> (2, control, EOS), <0x00>..<0xFF> (3..258, byte),
// U+2581 "▁" (259, normal: SentencePiece's space, so spaces decode as spaces), then <unused_0>, <unused_1>, ... (unused). REQUIRES: vocab_size >= kBuiltinVocabSize.
std::vector<std::pair<std::string, GgufValue>> BuiltinVocabMetadata(int64_t vocab_size);

// Validates the options (positive dimensions, heads divisible by KV heads, even head_dim,
// block-aligned rows for quantized types, supported weight type, a readable vocab file with
// tokenizer.ggml.tokens) and lays out the file. Reads only the vocab file's metadata.
absl::StatusOr<SyntheticModelPlan> PlanSyntheticModel(const SyntheticModelOptions& options);

// A writer holding the plan's metadata and lazy fills that generate each tensor when written.
absl::StatusOr<GgufWriter> BuildSyntheticModel(const SyntheticModelOptions& options);

using SyntheticProgressFn = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;

// Writes the model to `out_path` (atomically, via GgufWriter::WriteFile). `progress`, if set,
// is called with bytes written so far.
absl::Status WriteSyntheticModel(const SyntheticModelOptions& options, const std::string& out_path,
                                 const SyntheticProgressFn& progress = {});

}  // namespace duet

#endif  // DUET_COMMON_MODEL_SYNTHETIC_MODEL_H_
