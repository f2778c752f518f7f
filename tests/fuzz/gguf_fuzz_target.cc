// libFuzzer entry point for the GGUF reader. Any input must either parse or fail with a
// status; on success every metadata value is rendered and every tensor byte is read, so ASan
// reports a tensor pointer or size that strays outside the input.
#include <cstddef>
#include <cstdint>
#include <limits>

#include "absl/types/span.h"
#include "common/model/gguf.h"

namespace {

// Walks a value through every typed view, recursing into arrays.
void TouchValue(const duet::GgufValue& v) {
  (void)v.AsInt();
  (void)v.AsUint();
  (void)v.AsDouble();
  (void)v.AsBool();
  (void)v.AsString();
  auto array = v.AsArray();
  if (array.ok()) {
    for (const duet::GgufValue& item : (*array)->items) TouchValue(item);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = duet::GgufFile::Parse(absl::Span<const uint8_t>(data, size));
  if (!file.ok()) return 0;
  const duet::GgufFile& f = **file;
  size_t rendered = 0;
  for (const auto& [key, value] : f.metadata()) {
    rendered += value.DebugString().size();
    rendered += value.DebugString(std::numeric_limits<size_t>::max()).size();
    TouchValue(value);
    if (f.Find(key) == nullptr) __builtin_trap();
  }
  uint8_t checksum = 0;
  for (const duet::GgufTensorInfo& t : f.tensors()) {
    for (uint64_t i = 0; i < t.num_bytes; ++i) checksum ^= t.data[i];
    if (f.FindTensor(t.name) == nullptr || t.num_elements() <= 0) __builtin_trap();
  }
  // Keep the reads observable so the compiler cannot drop them.
  volatile uint8_t sink = checksum;
  volatile size_t sink_size = rendered;
  (void)sink;
  (void)sink_size;
  return 0;
}
