// Human-readable numbers for CLI output.
#ifndef DUET_COMMON_BASE_FORMAT_H_
#define DUET_COMMON_BASE_FORMAT_H_

#include <cstdint>
#include <string>

namespace duet {

// "512 B", "1.50 KiB", "20.00 GiB" (binary units, two decimals).
std::string FormatBytes(uint64_t bytes);

// "950", "1.50K", "134.52M", "1.10B" (decimal units, two decimals).
std::string FormatCount(int64_t n);

}  // namespace duet

#endif  // DUET_COMMON_BASE_FORMAT_H_
