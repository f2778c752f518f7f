// `duet make-model`: writes a synthetic GGUF model (a named shape with seeded random weights).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/args.h"
#include "common/base/format.h"
#include "common/base/progress.h"
#include "common/model/calculators.h"
#include "common/model/ggml_types.h"
#include "common/model/shapes.h"
#include "common/model/synthetic_model.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/commands.h"

namespace duet::cli {

int RunMakeModel(const Args& args) {
  std::string shape_name;
  std::string dtype_name = "f16";
  std::string vocab_path;
  std::string out_path;
  int64_t seed = 0;
  const std::string command = "duet make-model";
  ArgParser parser(command);
  parser.AddString("shape", &shape_name, absl::StrCat("model shape: ", ShapeNames()),
                   /*required=*/true);
  parser.AddString("dtype", &dtype_name, "weight type: f32, f16, q8_0 or q4_0 (default f16)");
  parser.AddString("vocab", &vocab_path,
                   "vocab GGUF whose tokenizer.* keys are copied (default: built-in byte vocab)");
  parser.AddInt("seed", &seed, "random seed; the same seed writes a byte-identical file");
  parser.AddString("output", &out_path, "output GGUF path", /*required=*/true, "o");
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;

  absl::StatusOr<ModelShape> shape = FindShape(shape_name);
  if (!shape.ok()) {
    return UsageError(command, absl::StrCat("--shape: ", shape.status().message()));
  }
  absl::StatusOr<GgmlType> dtype = ParseGgmlType(dtype_name);
  if (!dtype.ok() || !FileTypeForWeightType(*dtype).ok()) {
    return UsageError(command, absl::StrCat("--dtype: unsupported type '", dtype_name,
                                            "' (valid: f32, f16, q8_0, q4_0)"));
  }
  if (seed < 0) return UsageError(command, "--seed must be non-negative");

  SyntheticModelOptions options;
  options.shape = *shape;
  options.weight_type = *dtype;
  options.vocab_path = vocab_path;
  options.seed = static_cast<uint64_t>(seed);

  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<SyntheticModelPlan> plan = PlanSyntheticModel(options);
  if (!plan.ok()) return Fail(command, plan.status());
  absl::StatusOr<GgufWriter> writer = BuildSyntheticModel(options);
  if (!writer.ok()) return Fail(command, writer.status());
  const uint64_t file_size = writer->FileSize();
  {
    ProgressBar bar(absl::StrCat("writing ", out_path), file_size);
    uint64_t reported = 0;
    absl::Status s = writer->WriteFile(out_path, [&](uint64_t done, uint64_t) {
      if (done > reported) bar.Add(done - reported);
      reported = std::max(reported, done);
    });
    if (!s.ok()) return Fail(command, s);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "%s\n",
      absl::StrFormat("wrote %s %s: %d parameters (%.1fM), vocab %d, %s (%d bytes) in "
                      "%.1f s -> %s",
                      shape->name, GgmlTypeName(*dtype), ParameterCount(plan->shape),
                      static_cast<double>(ParameterCount(plan->shape)) / 1e6,
                      plan->shape.vocab_size, FormatBytes(file_size), file_size, seconds, out_path)
          .c_str());
  return 0;
}

}  // namespace duet::cli
