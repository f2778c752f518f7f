// Status helpers shared by every layer. Errors travel as absl::Status; these macros keep
// call sites short without hiding control flow.
#ifndef DUET_COMMON_BASE_STATUS_H_
#define DUET_COMMON_BASE_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DUET_STATUS_CONCAT_INNER_(a, b) a##b
#define DUET_STATUS_CONCAT_(a, b) DUET_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define DUET_RETURN_IF_ERROR(expr)                 \
  do {                                             \
    ::absl::Status duet_status_ = (expr);          \
    if (!duet_status_.ok()) return duet_status_;   \
  } while (0)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or returns its error status.
#define DUET_ASSIGN_OR_RETURN(lhs, rexpr) \
  DUET_ASSIGN_OR_RETURN_IMPL_(DUET_STATUS_CONCAT_(duet_statusor_, __LINE__), lhs, rexpr)

#define DUET_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // DUET_COMMON_BASE_STATUS_H_
