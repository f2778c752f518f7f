#include "common/sched/request.h"

namespace duet::sched {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAborted:
      return "aborted";
    case FinishReason::kPrefillDone:
      return "prefill_done";
    case FinishReason::kResourceExhausted:
      return "resource_exhausted";
  }
  return "unknown";
}

}  // namespace duet::sched
