// Decoding GGML element types from storage buffers declared as `uint words[]` (32-bit words),
// which every Vulkan device can read: no 8/16-bit storage features needed. Byte offsets are
// from the start of the bound view; rows and blocks need not be 4-byte aligned.
//
// Layouts (bit-exact with common/model/quant.h, DequantizeRow):
//   F16  : IEEE half.
//   Q8_0 : 34-byte block of 32 weights: f16 scale d, then 32 x int8 q; x = float(q) * d.
//   Q4_0 : 18-byte block of 32 weights: f16 scale d, then 16 bytes; byte j holds element j in
//          its low nibble and element j + 16 in its high nibble; x = float(nibble - 8) * d.
#ifndef DUET_TYPES_GLSL_
#define DUET_TYPES_GLSL_

#define DUET_QK 32u
#define DUET_Q8_0_BLOCK_BYTES 34u
#define DUET_Q4_0_BLOCK_BYTES 18u

// Byte `o` (uint, 0..255) / little-endian 16-bit value at even byte offset `o` of `buf`.
#define DUET_LOAD_U8(buf, o) ((buf[(o) >> 2u] >> (((o) & 3u) * 8u)) & 0xffu)
#define DUET_LOAD_U16(buf, o) ((buf[(o) >> 2u] >> (((o) & 2u) * 8u)) & 0xffffu)
// f16 at even byte offset `o`, as float.
#define DUET_LOAD_F16(buf, o) unpackHalf2x16(DUET_LOAD_U16(buf, o)).x

// The int8 value of a byte.
int duet_sign_extend8(uint byte_value) { return int(byte_value << 24u) >> 24; }

// Element `j` (0..31) of the Q8_0 block at byte offset `block` of `buf`.
#define DUET_Q8_0_VALUE(buf, block, j) \
  (float(duet_sign_extend8(DUET_LOAD_U8(buf, (block) + 2u + (j)))) * DUET_LOAD_F16(buf, block))

// Element `j` (0..31) of the Q4_0 block at byte offset `block` of `buf`.
#define DUET_Q4_0_VALUE(buf, block, j)                                                   \
  (float(int((DUET_LOAD_U8(buf, (block) + 2u + ((j) & 15u)) >> (((j) >> 4u) * 4u)) & 15u) - \
         8) *                                                                            \
   DUET_LOAD_F16(buf, block))

#endif  // DUET_TYPES_GLSL_
