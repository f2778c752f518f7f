// One structured log line per request lifecycle event, on every process, so that one request
// can be followed across the router and the nodes by its id (grep 'request=r-...'):
//
//   request=<id> event=<event> [key=value ...]
//
// Events: router: received, assigned, first_token, preempted, finished, failed; prefill node:
// prefill_start, prefill_end, transfer_end, failed; decode node: reserved, kv_received,
// finished, failed. Logged at info level through spdlog's default logger.
#ifndef DUET_COMMON_BASE_REQUEST_LOG_H_
#define DUET_COMMON_BASE_REQUEST_LOG_H_

#include <spdlog/spdlog.h>

#include <string_view>

namespace duet {

// `details`: "key=value" pairs separated by spaces (values without spaces), or "".
inline void LogRequestEvent(std::string_view request_id, std::string_view event,
                            std::string_view details = "") {
  spdlog::info("request={} event={}{}{}", request_id, event, details.empty() ? "" : " ",
               details);
}

}  // namespace duet

#endif  // DUET_COMMON_BASE_REQUEST_LOG_H_
