// Minimal JSON output helpers (Duet writes JSON; it never needs to parse it in C++).
#ifndef DUET_COMMON_BASE_JSON_H_
#define DUET_COMMON_BASE_JSON_H_

#include <string>
#include <string_view>

namespace duet {

// `s` as a JSON string literal, quotes included. Control characters are \u-escaped; bytes
// >= 0x80 pass through unchanged (callers pass UTF-8).
std::string JsonString(std::string_view s);

// A float as the shortest decimal that reads back as the same float; NaN and infinities,
// which JSON cannot hold, become null.
std::string JsonFloat(float value);

}  // namespace duet

#endif  // DUET_COMMON_BASE_JSON_H_
