// The tiny synthetic model (common/model/synthetic_model.h) as the router serves it, written
// once per test process to a temporary file. Builtin vocabulary: <unk> 0, <s> 1 (BOS),
// </s> 2 (EOS), byte tokens <0x00>..<0xFF> = 3..258, "▁" 259; context length 512.
#ifndef DUET_TESTS_ROUTER_TEST_MODEL_H_
#define DUET_TESTS_ROUTER_TEST_MODEL_H_

#include <cstdint>

#include "router/served_model.h"

namespace duet::router::testing {

inline constexpr int32_t kBos = 1;
inline constexpr int32_t kEos = 2;
// The byte token of `byte`.
constexpr int32_t ByteToken(unsigned char byte) { return 3 + byte; }

// Loaded on first use; lives until the process exits. Its id is "tiny".
const ServedModel& TinyModel();

}  // namespace duet::router::testing

#endif  // DUET_TESTS_ROUTER_TEST_MODEL_H_
