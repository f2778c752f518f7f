#include "common/vk/dispatch_rows.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace duet::vk {

absl::StatusOr<int64_t> RowsPerDispatch(const DeviceLimits& limits,
                                        std::initializer_list<int64_t> row_bytes, uint64_t max_rows,
                                        const char* op) {
  uint64_t fit = max_rows;
  uint64_t step = 1;
  for (int64_t bytes : row_bytes) {
    const uint64_t row = static_cast<uint64_t>(bytes);
    fit = std::min(fit, limits.max_storage_buffer_range / row);
    const uint64_t low_bit = row & (~row + 1);
    step = std::max(step, limits.min_storage_buffer_offset_alignment > low_bit
                              ? limits.min_storage_buffer_offset_alignment / low_bit
                              : uint64_t{1});
  }
  const uint64_t rows = fit - fit % step;
  if (rows == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": a row does not fit in maxStorageBufferRange ", limits.max_storage_buffer_range));
  }
  return static_cast<int64_t>(rows);
}

}  // namespace duet::vk
