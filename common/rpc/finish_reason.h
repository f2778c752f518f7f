// The short name of a duet.v1.FinishReason, as logs, metrics labels and CLIs print it.
#ifndef DUET_COMMON_RPC_FINISH_REASON_H_
#define DUET_COMMON_RPC_FINISH_REASON_H_

#include "duet/v1/types.pb.h"

namespace duet::rpc {

// "stop", "length", "stop_string", "cancelled", "error"; "unspecified" for anything else.
const char* FinishReasonName(v1::FinishReason reason);

}  // namespace duet::rpc

#endif  // DUET_COMMON_RPC_FINISH_REASON_H_
