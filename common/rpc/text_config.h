// Protobuf text-format configuration files (ClusterConfig, test fixtures) and "--set a.b=value"
// overrides of single fields.
//
// Errors name the source and a 1-based line:column, e.g.
//   "cluster.pbtxt:12:5: Message type "duet.v1.KvConfig" has no field named "blok_size"."
// On any error the target message is left unchanged.
//
// Thread safety: all functions are thread-compatible (no shared state).
#ifndef DUET_COMMON_RPC_TEXT_CONFIG_H_
#define DUET_COMMON_RPC_TEXT_CONFIG_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace duet::rpc {

// Replaces *msg with the text-format `text`. `source_name` prefixes error positions (a file
// name). INVALID_ARGUMENT listing every parse error ("source:line:col: message", one per line).
// REQUIRES: msg != nullptr.
absl::Status ParseTextProto(std::string_view text, google::protobuf::Message* msg,
                            std::string_view source_name = "<text>");

// Reads the text-format file at `path` into *msg. NOT_FOUND when the file does not exist,
// PERMISSION_DENIED when it cannot be read, INVALID_ARGUMENT for a directory, a file over 16 MiB,
// or a parse error (positions prefixed with `path`). REQUIRES: msg != nullptr.
absl::Status LoadTextProto(const std::string& path, google::protobuf::Message* msg);

// Applies "path=value" overrides in order, e.g. {"kv.block_size=32", "router.port=0",
// "kv.dtype=KV_DTYPE_F16", "backend=cpu"}. The path names singular fields by their proto names,
// descending through singular message fields (created when absent); the last one must be a
// scalar. Values: decimal integers (range-checked for the field's type), finite floats,
// true/false/1/0 for bools, enum value names (or their numbers), strings and bytes verbatim
// (everything after the first '='). Setting a member of a oneof clears its siblings.
// INVALID_ARGUMENT naming the override and the bad path component or value; then no override
// is applied. REQUIRES: msg != nullptr.
absl::Status ApplyOverrides(const std::vector<std::string>& overrides,
                            google::protobuf::Message* msg);

}  // namespace duet::rpc

#endif  // DUET_COMMON_RPC_TEXT_CONFIG_H_
