// Block identity for prefix caching: a chained hash over a prompt's full KV blocks.
//
// The hash of block i of a token list is
//   XXH3-64(seed kBlockHashSeed) of the little-endian bytes
//     u32 kBlockHashVersion | u64 parent | u32 len(model_id) | model_id | u32 len(cache_salt) |
//     cache_salt | u32 n | n x i32 token ids (the block's block_size tokens)
// where parent is the hash of block i - 1 (kRootParent for block 0); a result of 0 becomes 1,
// so 0 never names a block. So a block's hash names
// the whole prefix up to its end in one model and one tenant namespace: two token lists share
// the hash of block i exactly when their first (i + 1) * block_size tokens, model ids and salts
// are equal (up to 64-bit collisions). The function, seed and version are fixed: every process
// of every build computes the same values (tests pin golden values); a change to any of them
// must bump kBlockHashVersion.
//
// Only full blocks have a hash: a partial last block is always recomputed.
#ifndef DUET_COMMON_KV_BLOCK_HASH_H_
#define DUET_COMMON_KV_BLOCK_HASH_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/types/span.h"

namespace duet::kv {

inline constexpr uint32_t kBlockHashVersion = 1;
inline constexpr uint64_t kBlockHashSeed = 0x6475657462686131ULL;  // "duetbha1"
inline constexpr uint64_t kRootParent = 0;

using BlockHash = uint64_t;

// The hash of one block whose predecessor has hash `parent`.
BlockHash HashBlock(BlockHash parent, std::string_view model_id, std::string_view cache_salt,
                    absl::Span<const int32_t> block_tokens);

// The most leading blocks of a prompt of num_tokens tokens that may be reused from a cache:
// the block holding the last token is always computed (its logits give the first token) and,
// in a transfer, always sent (it carries that token). REQUIRES: num_tokens >= 1, block_size > 0.
inline int64_t MaxReusedBlocks(int64_t num_tokens, int64_t block_size) {
  return (num_tokens - 1) / block_size;
}

// The hashes of the full blocks of `tokens` (tokens.size() / block_size of them), in order.
// REQUIRES: block_size > 0.
std::vector<BlockHash> HashBlocks(std::string_view model_id, std::string_view cache_salt,
                                  absl::Span<const int32_t> tokens, int64_t block_size);

}  // namespace duet::kv

#endif  // DUET_COMMON_KV_BLOCK_HASH_H_
