// The FlashAttention-2 core shared by flash_attn_prefill.comp and paged_attn_decode.comp.
//
// A workgroup owns one query tile for one KV head: the query positions
// [tile_pos, tile_pos + Q_POS) of one sequence times the GROUP query heads that share the KV
// head (grouped-query attention: query head h uses KV head h / GROUP). Row r of the tile is
// position tile_pos + r / GROUP, query head kv_head * GROUP + r % GROUP. Tiles are aligned to
// absolute positions (tile_pos % Q_POS == 0), so a row's arithmetic does not depend on how a
// prompt was split into chunks or what else is in the batch. Exception: with
// ATTN_TILES_AT_CACHED (texel decode, where each row folds its keys alone, so the tile start
// changes no row's arithmetic) tiles start at num_cached and may hold rows of two blocks.
//
// The workgroup walks key tiles of BC positions (aligned to multiples of BC) over a key range,
// staging K and V in shared memory as f32 (dequantized once, on load). Each row belongs to
// LANES consecutive invocations that split head_dim between them (lane l holds the vec4s
// l, l + LANES, ... of q and of the output accumulator, in registers) and combine partial dot
// products with subgroupShuffleXor. Per row and key tile: the scores (in shared memory, one
// column per invocation) and their max, then the online-softmax update (running max m and sum
// l, accumulator rescaled by exp(m_old - m_new)) and acc += p * V. The rows x keys score matrix
// of the whole range is never stored.
//   GPUs: LANES = 8 keeps q and acc at a few registers per thread.
//   CPU drivers (lavapipe, an 8-lane SIMD subgroup): LANES = 1 when a tile has >= 8 rows, so
//   rows advance in lockstep with no cross-lane traffic; fewer rows (decode) spread each row
//   over the spare lanes.
//
// Which value a key has (common/kv/paged_kv.h): keys < num_cached are read from the cache, keys
// >= num_cached from the step's pending rows (k_new, v_new), rounded as the cache will store
// them (f16 for KV_F16 and KV_FP8, exact for KV_F32). For KV_FP8, keys in blocks before the
// query's own block read the sealed FP8 block (code * scale); keys in the own block read f16
// (the tail when committed). REQUIRES (host, KV_FP8): BLOCK_SIZE % Q_POS == 0, so an aligned
// query tile lies in one block (the texel path applies the rule per row). Key tiles entirely in the pool or entirely pending take straight-line
// load paths; tiles that mix sources go through the general per-key path.
//
// ATTN_TEXEL (CPU drivers; AttnTiles::reads): q, K and V are read through uniform texel buffers
// and nothing is staged: each invocation reads its row's vec4s of one key at a time and folds
// the key into the online softmax at once (no score tile). llvmpipe runs both sides of a branch
// with lanes masked off and loads storage buffers and shared memory lane by lane, so this path
// gives each common tile source a loop with no other load path in it.
//
// REQUIRES (host): WG * RPL >= Q_POS * GROUP * LANES, WG % LANES == 0, LANES a power of two
// <= the subgroup size dividing HEAD_DIM / 4; RPL == 1 unless ATTN_TEXEL.
//
// The including shader declares push constants `pc` with at least num_heads, num_kv_heads,
// layer, num_layers (uint) and scale (float, 1/sqrt(head_dim)), and its outputs (bindings 9+).
#ifndef DUET_FLASH_ATTN_CORE_GLSL_
#define DUET_FLASH_ATTN_CORE_GLSL_

#include "fp8.glsl"
#include "kv_cache.glsl"

layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint HEAD_DIM = 64;
layout(constant_id = 2) const uint Q_POS = 16;   // query positions per tile
layout(constant_id = 3) const uint GROUP = 1;    // query heads per KV head
layout(constant_id = 4) const uint BC = 16;      // keys per tile
layout(constant_id = 5) const uint BLOCK_SIZE = 16;
layout(constant_id = 6) const uint LANES = 1;    // invocations per row
// Rows per invocation (ATTN_TEXEL only; 1 on the staged path): an invocation holding several
// rows loads and decodes each key once for all of them, and a tile with more rows than one
// SIMD register holds no longer runs the workgroup in several passes.
layout(constant_id = 7) const uint RPL = 1;
layout(local_size_x_id = 0) in;

const uint D4 = HEAD_DIM / 4u;
const uint DL = D4 / LANES;   // vec4s of a row per lane
const uint R = Q_POS * GROUP; // rows per tile
const uint SLOTS = WG / LANES; // rows per pass of the workgroup: row slot s of invocation tid
                               // is row tid / LANES + s * SLOTS

// Masked scores and the initial running max. Finite, so no inf arithmetic is needed.
const float kNeg = -1.0e30;
const float kNegHalf = -0.5e30;

// Four E4M3 codes (byte 0 first) as floats.
vec4 duet_fp8x4_to_vec4(uint word) {
  return vec4(duet_fp8_e4m3_to_f32(word & 0xffu), duet_fp8_e4m3_to_f32((word >> 8u) & 0xffu),
              duet_fp8_e4m3_to_f32((word >> 16u) & 0xffu), duet_fp8_e4m3_to_f32(word >> 24u));
}

#if defined(ATTN_TEXEL)
// Component c of w. A dynamic index into a vector makes llvmpipe spill the vector to the stack
// and reload it lane by lane; selects stay in registers.
uint duet_component(uvec4 w, uint c) {
  return c == 0u ? w.x : (c == 1u ? w.y : (c == 2u ? w.z : w.w));
}
// Uniform texel buffers (RGBA32F / RGBA32UI views of the same bytes): on lavapipe a texel fetch
// costs a fraction of a storage-buffer load, and each invocation reads K and V straight from
// them, with no staging through shared memory (which llvmpipe accesses lane by lane).
layout(set = 0, binding = 0) uniform samplerBuffer q_tex;
layout(set = 0, binding = 1) uniform samplerBuffer k_new_tex;
layout(set = 0, binding = 2) uniform samplerBuffer v_new_tex;
#if defined(KV_F32)
layout(set = 0, binding = 3) uniform samplerBuffer k_cache_tex;
layout(set = 0, binding = 4) uniform samplerBuffer v_cache_tex;
#elif defined(KV_F16) || defined(KV_FP8)
layout(set = 0, binding = 3) uniform usamplerBuffer k_cache_tex;
layout(set = 0, binding = 4) uniform usamplerBuffer v_cache_tex;
#else
#error "define one of KV_F32, KV_F16, KV_FP8"
#endif
#if defined(KV_FP8)
layout(set = 0, binding = 7) uniform usamplerBuffer tail_tex;
uvec2 duet_tail_at(uint i) {
  const uvec4 t = texelFetch(tail_tex, int(i >> 1u));
  return (i & 1u) == 0u ? t.xy : t.zw;
}
#endif
vec4 duet_q_at(uint i) { return texelFetch(q_tex, int(i)); }
vec4 duet_new_at(uint part, uint i) {
  return part == 0u ? texelFetch(k_new_tex, int(i)) : texelFetch(v_new_tex, int(i));
}
#if defined(KV_F32)
vec4 duet_cache_at(uint part, uint i) {
  return part == 0u ? texelFetch(k_cache_tex, int(i)) : texelFetch(v_cache_tex, int(i));
}
#elif defined(KV_F16)
uvec2 duet_cache_at(uint part, uint i) {
  const uvec4 t = part == 0u ? texelFetch(k_cache_tex, int(i >> 1u))
                             : texelFetch(v_cache_tex, int(i >> 1u));
  return (i & 1u) == 0u ? t.xy : t.zw;
}
// Two vec4s of halves at an even index; c (0 or 1) of them as f32.
const uint VEC4S_PER_TEXEL = 2u;
uvec4 duet_cache_at4(uint part, uint i) {
  return part == 0u ? texelFetch(k_cache_tex, int(i >> 1u)) : texelFetch(v_cache_tex, int(i >> 1u));
}
vec4 duet_texel_vec4(uvec4 w, uint c, float scale) {
  return vec4(unpackHalf2x16(c == 0u ? w.x : w.z), unpackHalf2x16(c == 0u ? w.y : w.w));
}
#else
uint duet_cache_at(uint part, uint i) {
  const uvec4 t = part == 0u ? texelFetch(k_cache_tex, int(i >> 2u))
                             : texelFetch(v_cache_tex, int(i >> 2u));
  return duet_component(t, i & 3u);
}
// Four words (16 codes) at a multiple of 4; word c of them as f32 times the block's scale.
const uint VEC4S_PER_TEXEL = 4u;
uvec4 duet_cache_at4(uint part, uint i) {
  return part == 0u ? texelFetch(k_cache_tex, int(i >> 2u)) : texelFetch(v_cache_tex, int(i >> 2u));
}
vec4 duet_texel_vec4(uvec4 w, uint c, float scale) {
  return duet_fp8x4_to_vec4(duet_component(w, c)) * scale;
}
#endif
#else
layout(std430, set = 0, binding = 0) readonly buffer Q { vec4 q_in[]; };
layout(std430, set = 0, binding = 1) readonly buffer KNew { vec4 k_new[]; };
layout(std430, set = 0, binding = 2) readonly buffer VNew { vec4 v_new[]; };
#if defined(KV_F32)
layout(std430, set = 0, binding = 3) readonly buffer KCache { vec4 k_cache[]; };
layout(std430, set = 0, binding = 4) readonly buffer VCache { vec4 v_cache[]; };
vec4 duet_cache_at(uint part, uint i) { return part == 0u ? k_cache[i] : v_cache[i]; }
#elif defined(KV_F16)
layout(std430, set = 0, binding = 3) readonly buffer KCache { uvec2 k_cache[]; };
layout(std430, set = 0, binding = 4) readonly buffer VCache { uvec2 v_cache[]; };
uvec2 duet_cache_at(uint part, uint i) { return part == 0u ? k_cache[i] : v_cache[i]; }
#elif defined(KV_FP8)
layout(std430, set = 0, binding = 3) readonly buffer KCache { uint k_cache[]; };
layout(std430, set = 0, binding = 4) readonly buffer VCache { uint v_cache[]; };
uint duet_cache_at(uint part, uint i) { return part == 0u ? k_cache[i] : v_cache[i]; }
#else
#error "define one of KV_F32, KV_F16, KV_FP8"
#endif
layout(std430, set = 0, binding = 7) readonly buffer Tail { uvec2 tail[]; };
uvec2 duet_tail_at(uint i) { return tail[i]; }
vec4 duet_q_at(uint i) { return q_in[i]; }
vec4 duet_new_at(uint part, uint i) { return part == 0u ? k_new[i] : v_new[i]; }
#endif
layout(std430, set = 0, binding = 5) readonly buffer KScales { float k_scales[]; };
layout(std430, set = 0, binding = 6) readonly buffer VScales { float v_scales[]; };
layout(std430, set = 0, binding = 8) readonly buffer Seqs { uint seqs[]; };

#if !defined(ATTN_TEXEL)
shared vec4 k_tile[BC * D4];
shared vec4 v_tile[BC * D4];
// Scores, then probabilities, of the current key tile: [BC][WG], one column per invocation
// (consecutive invocations at consecutive addresses).
shared float p_tile[BC * WG];
#endif

// The sum of v over the LANES invocations of a row (halving butterfly). The loop has a constant
// trip count (LANES <= 32): a halving loop has none that the compiler derives, stays a loop, and
// makes every row-state access in a loop around it indirect (on lavapipe a per-lane round trip
// through scratch memory).
float duet_row_sum(float v) {
  [[unroll]] for (uint i = 1u; i <= 5u; ++i) {
    const uint o = LANES >> i;
    if (o > 0u) v += subgroupShuffleXor(v, o);
  }
  return v;
}

// The sequence and tile a workgroup works on.
struct AttnTile {
  uint q_offset;  // batch row of the sequence's first pending position
  uint cached;    // num_cached
  uint end;       // num_cached + num_new
  uint tail_slot;
  uint table;     // word index of the block table in seqs[]
  uint kv_head;
  uint tile_pos;  // first position of the query tile (multiple of Q_POS)
};

AttnTile duet_load_tile(uint s, uint kv_head, uint tile_index) {
  const uint base = s * DUET_SEQ_WORDS;
  AttnTile t;
  t.q_offset = seqs[base + DUET_SEQ_Q_OFFSET];
  t.cached = seqs[base + DUET_SEQ_NUM_CACHED];
  t.end = t.cached + seqs[base + DUET_SEQ_NUM_NEW];
  t.tail_slot = seqs[base + DUET_SEQ_TAIL_SLOT];
  t.table = seqs[base + DUET_SEQ_TABLE_OFFSET];
  t.kv_head = kv_head;
#if defined(ATTN_TILES_AT_CACHED)
  t.tile_pos = t.cached + tile_index * Q_POS;
#else
  t.tile_pos = (t.cached / Q_POS + tile_index) * Q_POS;
#endif
  return t;
}

// This invocation's row: its query, running state and output accumulator (private globals:
// arrays sized by specialization constants cannot live in structs that are copied).
// Indexed by the row slot s < RPL (see SLOTS).
int row_pos[RPL];       // position, -1 for slots without a row in the step
uint row_head[RPL];     // query head
uint row_lane;          // 0..LANES-1: which vec4s of its rows this invocation holds
float row_m[RPL];       // running max of the scores
float row_l[RPL];       // running sum of exp(score - m)
vec4 row_q[RPL][DL];    // row_q[s][i] = query vec4 (lane + i * LANES), pre-scaled by pc.scale
vec4 row_acc[RPL][DL];  // sum of p * v over the keys so far, same vec4s

// Vec4 `at` of the layer's K (part 0) or V (part 1) data as f32; `scale` is the block's FP8
// scale (ignored for F32 / F16).
vec4 duet_cache_vec4(uint part, uint at, float scale) {
#if defined(KV_FP8)
  return duet_fp8x4_to_vec4(duet_cache_at(part, at)) * scale;
#elif defined(KV_F16)
  return duet_unpack_f16x4(duet_cache_at(part, at));
#else
  return duet_cache_at(part, at);
#endif
}

// A key tile [k0, k0 + BC) that lies in one pool block: the vec4 index of its first key in the
// layer's data, and the block's FP8 scales (1 for F32 / F16), looked up once per tile.
struct BlockTile {
  uint first;
  float k_scale;
  float v_scale;
};
BlockTile duet_block_tile(AttnTile t, uint k0) {
  const uint block = seqs[t.table + k0 / BLOCK_SIZE];
  BlockTile b;
  b.first = ((block * pc.num_kv_heads + t.kv_head) * BLOCK_SIZE + k0 % BLOCK_SIZE) * D4;
  b.k_scale = 1.0;
  b.v_scale = 1.0;
#if defined(KV_FP8)
  b.k_scale = k_scales[block * pc.num_kv_heads + t.kv_head];
  b.v_scale = v_scales[block * pc.num_kv_heads + t.kv_head];
#endif
  return b;
}

// The cache entry (pool) of K (part 0) or V (part 1) at `key`, four elements at vec4 d4.
vec4 duet_load_pool(AttnTile t, uint part, uint key, uint d4) {
  const uint block = seqs[t.table + key / BLOCK_SIZE];
  const uint at = ((block * pc.num_kv_heads + t.kv_head) * BLOCK_SIZE + key % BLOCK_SIZE) * D4 + d4;
  float scale = 1.0;
#if defined(KV_FP8)
  scale = part == 0u ? k_scales[block * pc.num_kv_heads + t.kv_head]
                     : v_scales[block * pc.num_kv_heads + t.kv_head];
#endif
  return duet_cache_vec4(part, at, scale);
}

// A pending row's K or V at `key` (>= t.cached), rounded as the cache stores it.
vec4 duet_load_pending(AttnTile t, uint part, uint key, uint d4) {
  const uint src = ((t.q_offset + key - t.cached) * pc.num_kv_heads + t.kv_head) * D4 + d4;
  const vec4 v = duet_new_at(part, src);
#if defined(KV_F32)
  return v;
#else
  return duet_round_f16x4(v);
#endif
}

// Any key, by the rules in the file comment, for a query in block `own_block`.
vec4 duet_load_kv(AttnTile t, uint part, uint key, uint d4, uint own_block) {
#if defined(KV_FP8)
  if (key / BLOCK_SIZE < own_block) return duet_load_pool(t, part, key, d4);
  if (key < t.cached) {
    const uint at = ((((t.tail_slot * pc.num_layers + pc.layer) * 2u + part) * pc.num_kv_heads +
                      t.kv_head) * BLOCK_SIZE + key % BLOCK_SIZE) * D4 + d4;
    return duet_unpack_f16x4(duet_tail_at(at));
  }
#else
  if (key < t.cached) return duet_load_pool(t, part, key, d4);
#endif
  return duet_load_pending(t, part, key, d4);
}

void duet_begin_row(AttnTile t) {
  const uint tid = gl_LocalInvocationID.x;
  row_lane = tid % LANES;
  [[unroll]] for (uint s = 0u; s < RPL; ++s) {
    const uint r = tid / LANES + s * SLOTS;
    const uint pos = t.tile_pos + r / GROUP;
    const bool valid = r < R && pos >= t.cached && pos < t.end;
    row_pos[s] = valid ? int(pos) : -1;
    row_head[s] = t.kv_head * GROUP + r % GROUP;
    row_m[s] = kNeg;
    row_l[s] = 0.0;
    [[unroll]] for (uint i = 0u; i < DL; ++i) {
      row_q[s][i] = vec4(0.0);
      row_acc[s][i] = vec4(0.0);
    }
    if (valid) {
      const uint base =
          ((t.q_offset + pos - t.cached) * pc.num_heads + row_head[s]) * D4 + row_lane;
      [[unroll]] for (uint i = 0u; i < DL; ++i) {
        row_q[s][i] = duet_q_at(base + i * LANES) * pc.scale;
      }
    }
  }
}

// How a key tile is read: all from the pool, all pending, or key by key (mixed or partial).
const uint kFromPool = 0u;
const uint kFromPending = 1u;
const uint kMixed = 2u;

uint duet_tile_source(AttnTile t, uint k0, uint key_begin, uint key_end) {
  const bool inside = k0 >= key_begin && k0 + BC <= key_end;
#if defined(KV_FP8)
  // The blocks of the tile's first and last query (the same for tiles aligned to Q_POS).
  const uint first_block = t.tile_pos / BLOCK_SIZE;
  const uint last_block = (min(t.tile_pos + Q_POS, t.end) - 1u) / BLOCK_SIZE;
  if (inside && (k0 + BC - 1u) / BLOCK_SIZE < first_block) return kFromPool;
  if (inside && k0 >= t.cached && k0 / BLOCK_SIZE >= last_block) return kFromPending;
#else
  if (inside && k0 + BC <= t.cached) return kFromPool;
  if (inside && k0 >= t.cached) return kFromPending;
#endif
  return kMixed;
}

#if !defined(ATTN_TEXEL)
// Stages keys [k0, k0 + BC) of K and V in shared memory.
void duet_stage_tile(AttnTile t, uint source, uint k0, uint key_begin, uint key_end) {
  const uint tid = gl_LocalInvocationID.x;
  if (source == kFromPool && BLOCK_SIZE % BC == 0u) {
    const BlockTile b = duet_block_tile(t, k0);
    for (uint e = tid; e < BC * D4; e += WG) {
      k_tile[e] = duet_cache_vec4(0u, b.first + e, b.k_scale);
      v_tile[e] = duet_cache_vec4(1u, b.first + e, b.v_scale);
    }
  } else if (source == kFromPool) {
    for (uint e = tid; e < BC * D4; e += WG) {
      k_tile[e] = duet_load_pool(t, 0u, k0 + e / D4, e % D4);
      v_tile[e] = duet_load_pool(t, 1u, k0 + e / D4, e % D4);
    }
  } else if (source == kFromPending) {
    for (uint e = tid; e < BC * D4; e += WG) {
      k_tile[e] = duet_load_pending(t, 0u, k0 + e / D4, e % D4);
      v_tile[e] = duet_load_pending(t, 1u, k0 + e / D4, e % D4);
    }
  } else {
    // Keys outside [key_begin, key_end) are zeros (finite, so p * v stays 0 for them).
    for (uint e = tid; e < BC * D4; e += WG) {
      const uint key = k0 + e / D4;
      vec4 k = vec4(0.0);
      vec4 v = vec4(0.0);
      if (key >= key_begin && key < key_end) {
        k = duet_load_kv(t, 0u, key, e % D4, t.tile_pos / BLOCK_SIZE);
        v = duet_load_kv(t, 1u, key, e % D4, t.tile_pos / BLOCK_SIZE);
      }
      k_tile[e] = k;
      v_tile[e] = v;
    }
  }
}

// Folds keys [key_begin, key_end) into the row's running state (each row also masks keys after
// its own position). RPL == 1 here.
void duet_attend(AttnTile t, uint key_begin, uint key_end) {
  const uint tid = gl_LocalInvocationID.x;
  for (uint k0 = key_begin / BC * BC; k0 < key_end; k0 += BC) {
    const uint source = duet_tile_source(t, k0, key_begin, key_end);
    duet_stage_tile(t, source, k0, key_begin, key_end);
    barrier();
    // Scores of the tile's keys (masked: kNeg) and their max.
    float m_new = row_m[0];
    for (uint j = 0u; j < BC; ++j) {
      const uint key = k0 + j;
      float dot_qk = 0.0;
      [[unroll]] for (uint i = 0u; i < DL; ++i) {
        dot_qk += dot(row_q[0][i], k_tile[j * D4 + row_lane + i * LANES]);
      }
      dot_qk = duet_row_sum(dot_qk);
      const bool visible = key >= key_begin && key < key_end && int(key) <= row_pos[0];
      const float s = visible ? dot_qk : kNeg;
      p_tile[j * WG + tid] = s;
      m_new = max(m_new, s);
    }
    // Rescale the running state to the new max, then add this tile's p * V.
    const float alpha = row_m[0] <= kNegHalf ? 0.0 : exp(row_m[0] - m_new);
    row_l[0] *= alpha;
    [[unroll]] for (uint i = 0u; i < DL; ++i) row_acc[0][i] *= alpha;
    for (uint j = 0u; j < BC; ++j) {
      const float s = p_tile[j * WG + tid];
      const float p = s <= kNegHalf ? 0.0 : exp(s - m_new);
      row_l[0] += p;
      [[unroll]] for (uint i = 0u; i < DL; ++i) {
        row_acc[0][i] += p * v_tile[j * D4 + row_lane + i * LANES];
      }
    }
    row_m[0] = m_new;
    barrier();
  }
}

#else  // ATTN_TEXEL

// The lane's vec4s of one key's K or V row (kv_row[i] = vec4 row_lane + i * LANES).
vec4 kv_row[DL];

// Fills kv_row with K (part 0) or V (part 1) of key j of a pool tile that lies in one block
// (`first`: the word index of the tile's first key in the layer's data; `scale`: the block's
// FP8 scale).
void duet_load_block_row(uint first, float scale, uint part, uint j) {
  const uint at = first + j * D4;
#if !defined(KV_F32)  // (an F32 texel is one vec4 already)
  if (D4 % VEC4S_PER_TEXEL == 0u && LANES <= VEC4S_PER_TEXEL) {
    // Vec4 m * LANES + row_lane of texel T is the lane's vec4 T * (VEC4S_PER_TEXEL / LANES) + m:
    // one fetch serves several vec4s (16 FP8 codes, 8 halves).
    const uint per = VEC4S_PER_TEXEL / LANES;
    [[unroll]] for (uint tx = 0u; tx < D4 / VEC4S_PER_TEXEL; ++tx) {
      const uvec4 w = duet_cache_at4(part, at + tx * VEC4S_PER_TEXEL);
      [[unroll]] for (uint m = 0u; m < per; ++m) {
        kv_row[tx * per + m] = duet_texel_vec4(w, m * LANES + row_lane, scale);
      }
    }
    return;
  }
  if (VEC4S_PER_TEXEL % D4 == 0u && LANES == 1u) {
    // Small heads: a key's D4 vec4s start at a multiple of D4, inside one texel; one fetch.
    const uvec4 w = duet_cache_at4(part, at);
    const uint c0 = at % VEC4S_PER_TEXEL;
    [[unroll]] for (uint i = 0u; i < DL; ++i) kv_row[i] = duet_texel_vec4(w, c0 + i, scale);
    return;
  }
#endif
  [[unroll]] for (uint i = 0u; i < DL; ++i) {
    kv_row[i] = duet_cache_vec4(part, at + row_lane + i * LANES, scale);
  }
}

// Fills kv_row with K or V of pending key `key` (>= t.cached).
void duet_load_pending_row(AttnTile t, uint part, uint key) {
  [[unroll]] for (uint i = 0u; i < DL; ++i) kv_row[i] = duet_load_pending(t, part, key, row_lane + i * LANES);
}

// Fills kv_row with K or V of any key, by the rules in the file comment, as row slot s's query
// sees it (a tile that starts at num_cached may hold rows of two blocks).
void duet_load_any_row(AttnTile t, uint part, uint key, uint s) {
  const uint own_block = uint(max(row_pos[s], int(t.tile_pos))) / BLOCK_SIZE;
  [[unroll]] for (uint i = 0u; i < DL; ++i) {
    kv_row[i] = duet_load_kv(t, part, key, row_lane + i * LANES, own_block);
  }
}

// Folds one key, whose K is in kv_row, into row slot s's running state; sets fold_p[s] and
// fold_alpha[s] for the V half of the update (duet_fold_v).
float fold_p[RPL];
float fold_alpha[RPL];
void duet_fold_k(uint s, uint key) {
  float dot_qk = 0.0;
  [[unroll]] for (uint i = 0u; i < DL; ++i) dot_qk += dot(row_q[s][i], kv_row[i]);
  dot_qk = duet_row_sum(dot_qk);
  const bool visible = int(key) <= row_pos[s];
  const float m_new = visible ? max(row_m[s], dot_qk) : row_m[s];
  fold_alpha[s] = exp(row_m[s] - m_new);  // 1 when the max holds; 0 after the initial kNeg
  fold_p[s] = visible ? exp(dot_qk - m_new) : 0.0;
  row_l[s] = row_l[s] * fold_alpha[s] + fold_p[s];
  row_m[s] = m_new;
}

void duet_fold_v(uint s) {
  [[unroll]] for (uint i = 0u; i < DL; ++i) {
    row_acc[s][i] = row_acc[s][i] * fold_alpha[s] + fold_p[s] * kv_row[i];
  }
}

// Folds keys [key_begin, key_end) into the rows' running state one key at a time (each row also
// masks keys after its own position): the online-softmax update per key needs no score array.
// On a CPU driver both sides of a branch may run with lanes masked off, so the common case (a
// tile inside one pool block) has a loop of its own with no other load path inside. Pool and
// pending keys are loaded once for all of an invocation's rows; a mixed tile loads per row (its
// rows may sit in different blocks).
void duet_attend(AttnTile t, uint key_begin, uint key_end) {
  for (uint k0 = key_begin / BC * BC; k0 < key_end; k0 += BC) {
    const uint source = duet_tile_source(t, k0, key_begin, key_end);
    const uint j_begin = max(k0, key_begin) - k0;
    const uint j_end = min(k0 + BC, key_end) - k0;
    if (source == kFromPool && BLOCK_SIZE % BC == 0u) {
      const BlockTile b = duet_block_tile(t, k0);
      for (uint j = j_begin; j < j_end; ++j) {
        duet_load_block_row(b.first, b.k_scale, 0u, j);
        [[unroll]] for (uint s = 0u; s < RPL; ++s) duet_fold_k(s, k0 + j);
        duet_load_block_row(b.first, b.v_scale, 1u, j);
        [[unroll]] for (uint s = 0u; s < RPL; ++s) duet_fold_v(s);
      }
    } else if (source == kFromPending) {
      for (uint j = j_begin; j < j_end; ++j) {
        duet_load_pending_row(t, 0u, k0 + j);
        [[unroll]] for (uint s = 0u; s < RPL; ++s) duet_fold_k(s, k0 + j);
        duet_load_pending_row(t, 1u, k0 + j);
        [[unroll]] for (uint s = 0u; s < RPL; ++s) duet_fold_v(s);
      }
    } else {
      for (uint j = j_begin; j < j_end; ++j) {
        [[unroll]] for (uint s = 0u; s < RPL; ++s) {
          duet_load_any_row(t, 0u, k0 + j, s);
          duet_fold_k(s, k0 + j);
          duet_load_any_row(t, 1u, k0 + j, s);
          duet_fold_v(s);
        }
      }
    }
  }
}

#endif  // ATTN_TEXEL

#endif  // DUET_FLASH_ATTN_CORE_GLSL_
