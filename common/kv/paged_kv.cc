#include "common/kv/paged_kv.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/model/cpu_forward.h"
#include "common/model/fp8.h"
#include "common/model/quant.h"

namespace duet::kv {
namespace {

bool IsPowerOfTwo(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

// The value an f32 pending element has once stored as `dtype` (FP8 positions are first stored
// in the f16 tail, so they round like F16 until sealed).
float RoundForStorage(CacheDtype dtype, float x) {
  return dtype == CacheDtype::kF32 ? x : HalfToFloat(FloatToHalf(x));
}

}  // namespace

std::string_view CacheDtypeName(CacheDtype dtype) {
  switch (dtype) {
    case CacheDtype::kF32:
      return "f32";
    case CacheDtype::kF16:
      return "f16";
    case CacheDtype::kFp8E4M3:
      return "fp8";
  }
  return "?";
}

absl::StatusOr<CacheDtype> ParseCacheDtype(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(std::string(name));
  if (lower == "f32") return CacheDtype::kF32;
  if (lower == "f16") return CacheDtype::kF16;
  if (lower == "fp8" || lower == "fp8_e4m3" || lower == "e4m3") return CacheDtype::kFp8E4M3;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown KV cache dtype '", std::string(name), "' (expected f32, f16 or fp8)"));
}

double Fp8BytesRatio(int64_t block_size, int64_t head_dim) {
  const double tile = static_cast<double>(block_size * head_dim);
  return (tile + 4.0) / (2.0 * tile);
}

absl::Status KvLayout::Validate() const {
  if (num_layers <= 0 || num_kv_heads <= 0 || head_dim <= 0 || block_size <= 0 || num_blocks < 0 ||
      num_tail_slots < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV layout sizes must be positive: num_layers=", num_layers, " num_kv_heads=", num_kv_heads,
        " head_dim=", head_dim, " block_size=", block_size, " num_blocks=", num_blocks,
        " num_tail_slots=", num_tail_slots));
  }
  if (head_dim % 4 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim must be a multiple of 4, got ", head_dim));
  }
  if (!IsPowerOfTwo(block_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be a power of two, got ", block_size));
  }
  if (dtype != CacheDtype::kFp8E4M3 && num_tail_slots != 0) {
    return absl::InvalidArgumentError(absl::StrCat("only the fp8 KV cache has tail slots (dtype ",
                                                   std::string(CacheDtypeName(dtype)),
                                                   ", num_tail_slots ", num_tail_slots, ")"));
  }
  if (dtype == CacheDtype::kFp8E4M3 && Fp8BytesRatio(block_size, head_dim) > kMaxFp8BytesRatio) {
    return absl::InvalidArgumentError(absl::StrCat("fp8 KV blocks of ", block_size, " x ", head_dim,
                                                   " take ", Fp8BytesRatio(block_size, head_dim),
                                                   "x the bytes of f16 (limit ", kMaxFp8BytesRatio,
                                                   "): use a larger block_size"));
  }
  return absl::OkStatus();
}

int64_t KvLayout::element_bytes() const {
  switch (dtype) {
    case CacheDtype::kF32:
      return 4;
    case CacheDtype::kF16:
      return 2;
    case CacheDtype::kFp8E4M3:
      return 1;
  }
  return 0;
}

int64_t KvLayout::block_bytes() const {
  return num_layers * 2 * num_kv_heads * (tile_data_bytes() + tile_scale_bytes());
}

int64_t BlocksThatFit(const KvLayout& geometry, int64_t pool_bytes) {
  const int64_t per_block = geometry.block_bytes();
  return per_block > 0 && pool_bytes > 0 ? pool_bytes / per_block : 0;
}

// ---------------------------------------------------------------------------------------------
// PagedKvCache.

PagedKvCache::PagedKvCache(const KvLayout& layout) : layout_(layout) {
  const size_t parts = static_cast<size_t>(layout.num_layers * 2);
  data_.assign(parts, std::vector<uint8_t>(static_cast<size_t>(layout.layer_data_bytes())));
  scales_.assign(
      parts, std::vector<float>(layout.dtype == CacheDtype::kFp8E4M3
                                    ? static_cast<size_t>(layout.num_blocks * layout.num_kv_heads)
                                    : 0,
                                1.0f));
  tail_.assign(static_cast<size_t>(layout.num_tail_slots * layout.tail_slot_elements()), 0);
}

absl::StatusOr<PagedKvCache> PagedKvCache::Create(const KvLayout& layout) {
  if (absl::Status status = layout.Validate(); !status.ok()) return status;
  if (layout.num_blocks == 0) return absl::InvalidArgumentError("KV pool needs num_blocks > 0");
  return PagedKvCache(layout);
}

absl::Span<const uint8_t> PagedKvCache::data(int64_t layer, KvPart part) const {
  return data_[static_cast<size_t>(layer * 2 + static_cast<int64_t>(part))];
}

absl::Span<const float> PagedKvCache::scales(int64_t layer, KvPart part) const {
  return scales_[static_cast<size_t>(layer * 2 + static_cast<int64_t>(part))];
}

absl::Status PagedKvCache::CheckStep(int64_t layer, const SequenceView& seq, int64_t n) const {
  if (layer < 0 || layer >= layout_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " out of range [0, ", layout_.num_layers, ")"));
  }
  if (n < 0 || seq.num_cached < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("negative position count (num_cached ", seq.num_cached, ", n ", n, ")"));
  }
  const int64_t end = seq.num_cached + n;
  const int64_t blocks_needed = (end + layout_.block_size - 1) / layout_.block_size;
  if (static_cast<int64_t>(seq.block_table.size()) < blocks_needed) {
    return absl::InvalidArgumentError(absl::StrCat("block table has ", seq.block_table.size(),
                                                   " blocks; positions [0, ", end, ") need ",
                                                   blocks_needed));
  }
  for (int64_t b = 0; b < blocks_needed; ++b) {
    const int32_t id = seq.block_table[static_cast<size_t>(b)];
    if (id < 0 || id >= layout_.num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat(
          "block table entry ", b, " = ", id, " out of range [0, ", layout_.num_blocks, ")"));
    }
  }
  if (layout_.dtype == CacheDtype::kFp8E4M3 &&
      (seq.tail_slot < 0 || seq.tail_slot >= layout_.num_tail_slots)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tail slot ", seq.tail_slot, " out of range [0, ", layout_.num_tail_slots, ")"));
  }
  return absl::OkStatus();
}

absl::Status PagedKvCache::SealCompleted(int64_t layer, const SequenceView& seq, const float* k_new,
                                         const float* v_new, int64_t n) {
  if (absl::Status status = CheckStep(layer, seq, n); !status.ok()) return status;
  if (layout_.dtype != CacheDtype::kFp8E4M3) return absl::OkStatus();
  const int64_t bs = layout_.block_size;
  const int64_t hd = layout_.head_dim;
  const int64_t kv_dim = layout_.num_kv_heads * hd;
  const int64_t end = seq.num_cached + n;
  std::vector<float> tile(static_cast<size_t>(bs * hd));
  for (int64_t b = seq.num_cached / bs; (b + 1) * bs <= end; ++b) {
    const int32_t block = seq.block_table[static_cast<size_t>(b)];
    for (int part_index = 0; part_index < 2; ++part_index) {
      const KvPart part = static_cast<KvPart>(part_index);
      const float* pending = part == KvPart::kK ? k_new : v_new;
      std::vector<uint8_t>& data = Data(layer, part);
      for (int64_t head = 0; head < layout_.num_kv_heads; ++head) {
        for (int64_t slot = 0; slot < bs; ++slot) {
          const int64_t pos = b * bs + slot;
          float* dst = tile.data() + slot * hd;
          if (pos < seq.num_cached) {
            const uint16_t* src =
                tail_.data() + layout_.TailOffset(seq.tail_slot, layer, part, head, slot);
            for (int64_t d = 0; d < hd; ++d) dst[d] = HalfToFloat(src[d]);
          } else {
            const float* src = pending + (pos - seq.num_cached) * kv_dim + head * hd;
            for (int64_t d = 0; d < hd; ++d) dst[d] = RoundForStorage(layout_.dtype, src[d]);
          }
        }
        const float scale = Fp8BlockScale(AbsMax(tile.data(), bs * hd));
        Scales(layer, part)[static_cast<size_t>(layout_.ScaleOffset(block, head))] = scale;
        QuantizeFp8(tile.data(), bs * hd, scale, data.data() + layout_.PoolOffset(block, head, 0));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status PagedKvCache::Commit(int64_t layer, const SequenceView& seq, const float* k_new,
                                  const float* v_new, int64_t accepted) {
  if (absl::Status status = CheckStep(layer, seq, accepted); !status.ok()) return status;
  const int64_t bs = layout_.block_size;
  const int64_t hd = layout_.head_dim;
  const int64_t kv_dim = layout_.num_kv_heads * hd;
  const int64_t end = seq.num_cached + accepted;
  // FP8 keeps only the trailing partial block (in the tail); completed blocks are sealed.
  const int64_t first = layout_.dtype == CacheDtype::kFp8E4M3
                            ? std::max(seq.num_cached, end / bs * bs)
                            : seq.num_cached;
  for (int part_index = 0; part_index < 2; ++part_index) {
    const KvPart part = static_cast<KvPart>(part_index);
    const float* pending = part == KvPart::kK ? k_new : v_new;
    for (int64_t pos = first; pos < end; ++pos) {
      const int32_t block = seq.block_table[static_cast<size_t>(pos / bs)];
      for (int64_t head = 0; head < layout_.num_kv_heads; ++head) {
        const float* src = pending + (pos - seq.num_cached) * kv_dim + head * hd;
        switch (layout_.dtype) {
          case CacheDtype::kF32:
            std::memcpy(Data(layer, part).data() + layout_.PoolOffset(block, head, pos % bs) * 4,
                        src, static_cast<size_t>(hd) * 4);
            break;
          case CacheDtype::kF16: {
            uint8_t* dst = Data(layer, part).data() + layout_.PoolOffset(block, head, pos % bs) * 2;
            for (int64_t d = 0; d < hd; ++d) {
              const uint16_t h = FloatToHalf(src[d]);
              std::memcpy(dst + d * 2, &h, 2);
            }
            break;
          }
          case CacheDtype::kFp8E4M3: {
            uint16_t* dst =
                tail_.data() + layout_.TailOffset(seq.tail_slot, layer, part, head, pos % bs);
            for (int64_t d = 0; d < hd; ++d) dst[d] = FloatToHalf(src[d]);
            break;
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

void PagedKvCache::ReadHead(int64_t layer, KvPart part, const SequenceView& seq,
                            const float* pending, int64_t query_pos, int64_t key_pos, int64_t head,
                            float* dst) const {
  const int64_t bs = layout_.block_size;
  const int64_t hd = layout_.head_dim;
  const int32_t block = seq.block_table[static_cast<size_t>(key_pos / bs)];
  const int64_t slot = key_pos % bs;
  const std::vector<uint8_t>& data =
      data_[static_cast<size_t>(layer * 2 + static_cast<int64_t>(part))];
  if (layout_.dtype == CacheDtype::kFp8E4M3 && key_pos / bs < query_pos / bs) {
    const float scale = scales(layer, part)[static_cast<size_t>(layout_.ScaleOffset(block, head))];
    DequantizeFp8(data.data() + layout_.PoolOffset(block, head, slot), hd, scale, dst);
    return;
  }
  if (key_pos >= seq.num_cached) {
    const float* src = pending + (key_pos - seq.num_cached) * layout_.num_kv_heads * hd + head * hd;
    for (int64_t d = 0; d < hd; ++d) dst[d] = RoundForStorage(layout_.dtype, src[d]);
    return;
  }
  switch (layout_.dtype) {
    case CacheDtype::kF32:
      std::memcpy(dst, data.data() + layout_.PoolOffset(block, head, slot) * 4,
                  static_cast<size_t>(hd) * 4);
      break;
    case CacheDtype::kF16: {
      const uint8_t* src = data.data() + layout_.PoolOffset(block, head, slot) * 2;
      for (int64_t d = 0; d < hd; ++d) {
        uint16_t h;
        std::memcpy(&h, src + d * 2, 2);
        dst[d] = HalfToFloat(h);
      }
      break;
    }
    case CacheDtype::kFp8E4M3: {
      const uint16_t* src =
          tail_.data() + layout_.TailOffset(seq.tail_slot, layer, part, head, slot);
      for (int64_t d = 0; d < hd; ++d) dst[d] = HalfToFloat(src[d]);
      break;
    }
  }
}

void PagedKvCache::KeyValueFor(int64_t layer, const SequenceView& seq, const float* k_new,
                               const float* v_new, int64_t query_pos, int64_t key_pos, float* k,
                               float* v) const {
  const int64_t hd = layout_.head_dim;
  for (int64_t head = 0; head < layout_.num_kv_heads; ++head) {
    ReadHead(layer, KvPart::kK, seq, k_new, query_pos, key_pos, head, k + head * hd);
    ReadHead(layer, KvPart::kV, seq, v_new, query_pos, key_pos, head, v + head * hd);
  }
}

absl::Status PagedKvCache::Attention(int64_t layer, const SequenceView& seq, const float* q,
                                     int64_t num_heads, const float* k_new, const float* v_new,
                                     int64_t n, float* out) const {
  if (absl::Status status = CheckStep(layer, seq, n); !status.ok()) return status;
  if (num_heads <= 0 || num_heads % layout_.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_heads ", num_heads,
                                                   " is not a positive multiple of num_kv_heads ",
                                                   layout_.num_kv_heads));
  }
  const int64_t bs = layout_.block_size;
  const int64_t hd = layout_.head_dim;
  const int64_t kv_dim = layout_.num_kv_heads * hd;
  // Queries in the same block see the same values for every key, so gather the keys once per
  // query block: [positions, num_kv_heads, head_dim].
  std::vector<float> keys;
  std::vector<float> values;
  int64_t gathered_block = -1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = seq.num_cached + i;
    if (pos / bs != gathered_block) {
      gathered_block = pos / bs;
      const int64_t last = std::min(seq.num_cached + n, (gathered_block + 1) * bs);
      keys.resize(static_cast<size_t>(last * kv_dim));
      values.resize(keys.size());
      for (int64_t j = 0; j < last; ++j) {
        KeyValueFor(layer, seq, k_new, v_new, pos, j, keys.data() + j * kv_dim,
                    values.data() + j * kv_dim);
      }
    }
    cpu_ref::Attention(q + i * num_heads * hd, keys.data(), values.data(), pos + 1, num_heads,
                       layout_.num_kv_heads, hd, out + i * num_heads * hd);
  }
  return absl::OkStatus();
}

}  // namespace duet::kv
