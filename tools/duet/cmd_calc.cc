// `duet kv-calc` and `duet quant-calc`: the KV-cache and weight-memory calculators, for a GGUF
// model file or a named shape.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/args.h"
#include "common/model/calculators.h"
#include "common/model/gguf.h"
#include "common/model/model_config.h"
#include "common/model/shapes.h"
#include "tools/duet/cli_util.h"
#include "tools/duet/commands.h"

namespace duet::cli {
namespace {

// The model a calculator runs on: from --model FILE or --shape NAME.
struct Subject {
  std::string name;
  ModelConfig config;
  std::vector<TensorSpec> tensors;
};

// Exactly one of model_path / shape_name must be set. Returns the exit code on failure
// (2 for usage, 1 for an unreadable model) after printing the error. Without `need_config`
// a model file only needs to parse as GGUF (its config is left default).
int LoadSubject(const std::string& command, const std::string& model_path,
                const std::string& shape_name, bool need_config, Subject* out) {
  if (model_path.empty() == shape_name.empty()) {
    return UsageError(
        command, absl::StrCat("give exactly one of --model FILE or --shape NAME (see '", command,
                              " --help')"));
  }
  if (!shape_name.empty()) {
    absl::StatusOr<ModelShape> shape = FindShape(shape_name);
    if (!shape.ok()) {
      return UsageError(command, absl::StrCat("--shape: ", shape.status().message()));
    }
    out->name = shape->name;
    out->config = ToModelConfig(*shape);
    out->tensors = TensorLayout(*shape);
    return 0;
  }
  absl::StatusOr<std::shared_ptr<const GgufFile>> file = OpenModelFile(model_path);
  if (!file.ok()) return Fail(command, file.status());
  absl::StatusOr<std::string> name = (*file)->GetString("general.name");
  out->name = name.ok() && !name->empty() ? *name : model_path;
  out->tensors = TensorSpecsFromGguf(**file);
  if (!need_config) return 0;
  absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(**file);
  if (!config.ok()) {
    return Fail(command, absl::Status(config.status().code(),
                                      absl::StrCat(model_path, ": ", config.status().message())));
  }
  out->config = *config;
  return 0;
}

}  // namespace

int RunKvCalc(const Args& args) {
  const std::string command = "duet kv-calc";
  std::string model_path;
  std::string shape_name;
  std::string dtype_name = "all";
  int64_t context = 0;
  int64_t batch = 1;
  bool json = false;
  ArgParser parser(command);
  parser.AddString("model", &model_path, "GGUF model file");
  parser.AddString("shape", &shape_name, absl::StrCat("named shape: ", ShapeNames()));
  parser.AddInt("context", &context, "context length in tokens (default: the model's context)");
  parser.AddInt("batch", &batch, "number of sequences (default 1)");
  parser.AddString("kv-dtype", &dtype_name,
                   "f32, f16, bf16, fp8, int8, int4 or all (default all); fp8/int8 add one f32 "
                   "scale per 16-token block per KV head, int4 one f16 scale per 32 elements");
  parser.AddBool("json", &json, "print JSON instead of a table");
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;

  std::vector<KvDtype> dtypes;
  if (dtype_name == "all") {
    dtypes = AllKvDtypes();
  } else {
    absl::StatusOr<KvDtype> d = ParseKvDtype(dtype_name);
    if (!d.ok()) {
      return UsageError(command, absl::StrCat("--kv-dtype: unknown KV dtype '", dtype_name,
                                              "' (valid: f32, f16, bf16, fp8, int8, int4, all)"));
    }
    dtypes.push_back(*d);
  }
  if (parser.WasSet("context") && context <= 0) {
    return UsageError(command, absl::StrCat("--context must be positive, got ", context));
  }
  if (batch <= 0) return UsageError(command, absl::StrCat("--batch must be positive, got ", batch));

  Subject subject;
  if (int rc = LoadSubject(command, model_path, shape_name, /*need_config=*/true, &subject);
      rc != 0) {
    return rc;
  }
  if (!parser.WasSet("context")) context = subject.config.context_length;

  absl::StatusOr<KvCacheReport> report =
      BuildKvCacheReport(subject.name, KvGeometryOf(subject.config), context, batch, dtypes);
  if (!report.ok()) return UsageError(command, std::string(report.status().message()));
  const std::string text = json ? RenderKvCacheJson(*report) : RenderKvCacheText(*report);
  std::fputs(text.c_str(), stdout);
  return 0;
}

int RunQuantCalc(const Args& args) {
  const std::string command = "duet quant-calc";
  std::string model_path;
  std::string shape_name;
  bool json = false;
  ArgParser parser(command);
  parser.AddString("model", &model_path, "GGUF model file (its tensors are used as they are)");
  parser.AddString("shape", &shape_name, absl::StrCat("named shape: ", ShapeNames()));
  parser.AddBool("json", &json, "print JSON instead of a table");
  if (int rc = ParseOrExit(parser, args); rc >= 0) return rc;

  Subject subject;
  if (int rc = LoadSubject(command, model_path, shape_name, /*need_config=*/false, &subject);
      rc != 0) {
    return rc;
  }
  if (subject.tensors.empty()) {
    return Fail(command, absl::InvalidArgumentError(absl::StrCat(model_path, " holds no tensors")));
  }
  absl::StatusOr<QuantReport> report = BuildQuantReport(subject.name, subject.tensors);
  if (!report.ok()) return Fail(command, report.status());
  const std::string text = json ? RenderQuantJson(*report) : RenderQuantText(*report);
  std::fputs(text.c_str(), stdout);
  return 0;
}

}  // namespace duet::cli
