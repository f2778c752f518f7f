#version 450
// Top-k of logits rows: the k largest values of each row with their ids, highest first, ties
// by lower id; NaN is never chosen. When a row has fewer than k non-NaN values the remaining
// slots get id -1 and value -inf.
// One workgroup per row, radix select (as GPU top-k implementations do): values map to
// order-preserving 32-bit keys; four passes over the row build 256-bin histograms of one key byte
// each (among the keys matching the bytes chosen so far), which pins down the k-th largest key
// T. Keys > T are collected in any order; keys == T are taken lowest id first (chunks of WG
// consecutive ids, ranked with subgroup ballots); the <= k candidates are then placed by rank.
//   logits: f32 [rows, vocab];  values: f32 [rows, k];  ids: int32 [rows, k].
//   Launch: Groups1D(rows).  REQUIRES: 1 <= k <= 64.
#extension GL_KHR_shader_subgroup_ballot : require
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(std430, set = 0, binding = 0) readonly buffer Logits { float logits[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Values { float values[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Ids { int ids[]; };

layout(push_constant) uniform Push {
  uint rows;
  uint vocab;
  uint k;
} pc;

const uint kMaxK = 64u;
const uint kMaxSubgroups = 64u;

shared uint hist[256];
shared uint sel_prefix;     // key bytes chosen so far
shared uint sel_remaining;  // how many keys equal to the prefix are still to be taken
shared uint sel_total;      // min(k, non-NaN values)
shared uint num_candidates;
shared uint sg_count[kMaxSubgroups];
shared float cand_value[kMaxK];
shared uint cand_id[kMaxK];

// Order-preserving key of a non-NaN float (-0 counts as +0).
uint duet_key(float v) {
  const uint bits = floatBitsToUint(v == 0.0 ? 0.0 : v);
  return (bits & 0x80000000u) != 0u ? ~bits : bits | 0x80000000u;
}

void main() {
  const uint row = duet_group_index();
  if (row >= pc.rows) return;  // uniform per workgroup
  const uint tid = gl_LocalInvocationID.x;
  const uint base = row * pc.vocab;

  // Radix select of the k-th largest key, one byte per pass from the top.
  if (tid == 0u) {
    sel_prefix = 0u;
    num_candidates = 0u;
  }
  uint mask = 0u;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (uint b = tid; b < 256u; b += WG) hist[b] = 0u;
    barrier();
    const uint prefix = sel_prefix;
    for (uint i = tid; i < pc.vocab; i += WG) {
      const float v = logits[base + i];
      if (isnan(v)) continue;
      const uint key = duet_key(v);
      if ((key & mask) == prefix) atomicAdd(hist[(key >> uint(shift)) & 255u], 1u);
    }
    barrier();
    if (tid == 0u) {
      if (shift == 24) {
        uint total = 0u;
        for (uint b = 0u; b < 256u; ++b) total += hist[b];
        sel_total = min(pc.k, total);
        sel_remaining = sel_total;
      }
      uint above = 0u;
      uint digit = 0u;
      for (int b = 255; b >= 0; --b) {
        if (above + hist[b] >= sel_remaining) {
          digit = uint(b);
          break;
        }
        above += hist[b];
      }
      sel_prefix = prefix | (digit << uint(shift));
      sel_remaining -= above;
    }
    mask |= 255u << uint(shift);
    barrier();
  }
  const uint threshold = sel_prefix;
  const uint total = sel_total;
  const uint take_equal = total == 0u ? 0u : sel_remaining;
  const uint greater = total - take_equal;

  // Keys above the threshold, in any order (there are `greater` of them).
  for (uint i = tid; i < pc.vocab; i += WG) {
    const float v = logits[base + i];
    if (!isnan(v) && duet_key(v) > threshold) {
      const uint slot = atomicAdd(num_candidates, 1u);
      cand_value[slot] = v;
      cand_id[slot] = i;
    }
  }
  // Keys equal to the threshold, lowest ids first.
  uint taken = 0u;
  for (uint c = 0u; c < pc.vocab && taken < take_equal; c += WG) {
    const uint i = c + tid;
    bool equal = false;
    float v = 0.0;
    if (i < pc.vocab) {
      v = logits[base + i];
      equal = !isnan(v) && duet_key(v) == threshold;
    }
    const uvec4 ballot = subgroupBallot(equal);
    if (subgroupElect()) sg_count[gl_SubgroupID] = subgroupBallotBitCount(ballot);
    barrier();
    uint rank = taken + subgroupBallotExclusiveBitCount(ballot);
    uint chunk_total = 0u;
    for (uint s = 0u; s < gl_NumSubgroups; ++s) {
      if (s < gl_SubgroupID) rank += sg_count[s];
      chunk_total += sg_count[s];
    }
    if (equal && rank < take_equal) {
      cand_value[greater + rank] = v;
      cand_id[greater + rank] = i;
    }
    taken += chunk_total;
    barrier();
  }
  barrier();

  // Place each candidate by its rank among the candidates.
  const uint out_base = row * pc.k;
  if (tid < total) {
    const float v = cand_value[tid];
    const uint id = cand_id[tid];
    uint rank = 0u;
    for (uint j = 0u; j < total; ++j) {
      const float w = cand_value[j];
      if (w > v || (w == v && cand_id[j] < id)) ++rank;
    }
    values[out_base + rank] = v;
    ids[out_base + rank] = int(id);
  }
  for (uint j = total + tid; j < pc.k; j += WG) {
    values[out_base + j] = uintBitsToFloat(0xff800000u);
    ids[out_base + j] = -1;
  }
}
