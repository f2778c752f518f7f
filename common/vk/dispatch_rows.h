// Row chunking for kernels that process [rows, row_bytes]-shaped tensors one dispatch at a time.
#ifndef DUET_COMMON_VK_DISPATCH_ROWS_H_
#define DUET_COMMON_VK_DISPATCH_ROWS_H_

#include <cstdint>
#include <initializer_list>

#include "absl/status/statusor.h"
#include "common/vk/device.h"

namespace duet::vk {

// The most rows (<= max_rows) one dispatch may take so that, for every row size in
// `row_bytes`, that many rows span <= maxStorageBufferRange and consecutive chunks stay
// aligned to minStorageBufferOffsetAlignment. INVALID_ARGUMENT naming `op` when a single row
// does not fit. REQUIRES: every row size > 0.
absl::StatusOr<int64_t> RowsPerDispatch(const DeviceLimits& limits,
                                        std::initializer_list<int64_t> row_bytes, uint64_t max_rows,
                                        const char* op);

}  // namespace duet::vk

#endif  // DUET_COMMON_VK_DISPATCH_ROWS_H_
