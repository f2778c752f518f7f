#include "common/kv/block_hash.h"

#include <xxhash.h>

#include <string>

namespace duet::kv {
namespace {

void AppendU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void AppendU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void AppendString(std::string* out, std::string_view s) {
  AppendU32(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

}  // namespace

BlockHash HashBlock(BlockHash parent, std::string_view model_id, std::string_view cache_salt,
                    absl::Span<const int32_t> block_tokens) {
  std::string bytes;
  bytes.reserve(24 + model_id.size() + cache_salt.size() + 4 * block_tokens.size());
  AppendU32(&bytes, kBlockHashVersion);
  AppendU64(&bytes, parent);
  AppendString(&bytes, model_id);
  AppendString(&bytes, cache_salt);
  AppendU32(&bytes, static_cast<uint32_t>(block_tokens.size()));
  for (const int32_t t : block_tokens) AppendU32(&bytes, static_cast<uint32_t>(t));
  const BlockHash hash = XXH3_64bits_withSeed(bytes.data(), bytes.size(), kBlockHashSeed);
  return hash == 0 ? 1 : hash;
}

std::vector<BlockHash> HashBlocks(std::string_view model_id, std::string_view cache_salt,
                                  absl::Span<const int32_t> tokens, int64_t block_size) {
  const size_t bs = static_cast<size_t>(block_size);
  std::vector<BlockHash> hashes;
  hashes.reserve(tokens.size() / bs);
  BlockHash parent = kRootParent;
  for (size_t begin = 0; begin + bs <= tokens.size(); begin += bs) {
    parent = HashBlock(parent, model_id, cache_salt, tokens.subspan(begin, bs));
    hashes.push_back(parent);
  }
  return hashes;
}

}  // namespace duet::kv
