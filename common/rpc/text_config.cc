#include "common/rpc/text_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace duet::rpc {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

constexpr int64_t kMaxConfigBytes = 16 << 20;

// Collects text-format errors as "source:line:col: message" (1-based positions).
class CollectingErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  CollectingErrorCollector(std::string_view source, std::string_view text)
      : source_(source),
        lines_(absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {}

  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (line < 0) {
      errors_.push_back(absl::StrCat(source_, ": ", message));
      return;
    }
    column = UnknownFieldColumn(line, column, message);
    errors_.push_back(absl::StrCat(source_, ":", line + 1, ":", column + 1, ": ", message));
  }

  const std::vector<std::string>& errors() const { return errors_; }

 private:
  // The parser reports an unknown field or enum value at the token after it; point at the name
  // itself. Columns count a tab as advancing to the next multiple of 8, as the parser's do.
  int UnknownFieldColumn(int line, int column, const std::string& message) const {
    if (static_cast<size_t>(line) >= lines_.size()) return column;
    for (absl::string_view marker : {"has no field named \"", "Unknown enumeration value of \""}) {
      const size_t found = message.find(marker.data(), 0, marker.size());
      if (found == std::string::npos) continue;
      const size_t name_begin = found + marker.size();
      const size_t name_end = message.find('"', name_begin);
      if (name_end == std::string::npos) return column;
      const absl::string_view name(message.data() + name_begin, name_end - name_begin);
      const absl::string_view text = lines_[static_cast<size_t>(line)];
      int best = -1;
      int col = 0;
      for (size_t i = 0; i < text.size() && col < column; ++i) {
        if (text.substr(i, name.size()) == name) best = col;
        col = text[i] == '\t' ? col + 8 - col % 8 : col + 1;
      }
      return best >= 0 ? best : column;
    }
    return column;
  }

  std::string source_;
  std::vector<absl::string_view> lines_;
  std::vector<std::string> errors_;
};

absl::Status ErrnoStatus(int err, const std::string& what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::UnknownError(message);
  }
}

absl::Status ReadSmallFile(const std::string& path, std::string* contents) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot open config file '", path, "'"));
  struct stat st {};
  absl::Status status;
  if (::fstat(fd, &st) != 0) {
    status = ErrnoStatus(errno, absl::StrCat("cannot stat config file '", path, "'"));
  } else if (S_ISDIR(st.st_mode)) {
    status = absl::InvalidArgumentError(absl::StrCat("config file '", path, "' is a directory"));
  } else if (st.st_size > kMaxConfigBytes) {
    status = absl::InvalidArgumentError(absl::StrCat("config file '", path, "' has ", st.st_size,
                                                     " bytes; at most ", kMaxConfigBytes,
                                                     " are allowed"));
  } else {
    char buffer[16384];
    while (status.ok()) {
      const ssize_t n = ::read(fd, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = ErrnoStatus(errno, absl::StrCat("cannot read config file '", path, "'"));
      } else if (n == 0) {
        break;
      } else if (static_cast<int64_t>(contents->size()) + n > kMaxConfigBytes) {
        status = absl::InvalidArgumentError(
            absl::StrCat("config file '", path, "' is over ", kMaxConfigBytes, " bytes"));
      } else {
        contents->append(buffer, static_cast<size_t>(n));
      }
    }
  }
  ::close(fd);
  return status;
}

std::string FieldNames(const Descriptor& type) {
  std::vector<std::string> names;
  for (int i = 0; i < type.field_count(); ++i) names.push_back(type.field(i)->name());
  return absl::StrJoin(names, ", ");
}

template <typename Int>
bool ParseInt(const std::string& text, Int* out) {
  return absl::SimpleAtoi(text, out);
}

// Sets the scalar `field` of `msg` from `value`; on failure returns why (without the override).
absl::Status SetScalar(Message* msg, const FieldDescriptor* field, const std::string& value) {
  const Reflection* reflection = msg->GetReflection();
  const auto bad_value = [&](const std::string& expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", value, "' is not ", expected, " (field ", field->full_name(), ")"));
  };
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!ParseInt(value, &v)) return bad_value("an int32");
      reflection->SetInt32(msg, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!ParseInt(value, &v)) return bad_value("an int64");
      reflection->SetInt64(msg, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t v;
      if (!ParseInt(value, &v)) return bad_value("a uint32");
      reflection->SetUInt32(msg, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!ParseInt(value, &v)) return bad_value("a uint64");
      reflection->SetUInt64(msg, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      double v;
      if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) return bad_value("a finite double");
      reflection->SetDouble(msg, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_FLOAT: {
      float v;
      if (!absl::SimpleAtof(value, &v) || !std::isfinite(v)) return bad_value("a finite float");
      reflection->SetFloat(msg, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      const std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(value));
      if (lower == "true" || lower == "1") {
        reflection->SetBool(msg, field, true);
      } else if (lower == "false" || lower == "0") {
        reflection->SetBool(msg, field, false);
      } else {
        return bad_value("a bool (true, false, 1 or 0)");
      }
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      const std::string name(absl::StripAsciiWhitespace(value));
      const EnumValueDescriptor* enum_value = field->enum_type()->FindValueByName(name);
      int32_t number;
      if (enum_value == nullptr && ParseInt(name, &number)) {
        enum_value = field->enum_type()->FindValueByNumber(number);
      }
      if (enum_value == nullptr) {
        std::vector<std::string> names;
        for (int i = 0; i < field->enum_type()->value_count(); ++i) {
          names.push_back(field->enum_type()->value(i)->name());
        }
        return bad_value(absl::StrCat("a value of ", field->enum_type()->full_name(), " (",
                                      absl::StrJoin(names, ", "), ")"));
      }
      reflection->SetEnum(msg, field, enum_value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_STRING:
      reflection->SetString(msg, field, value);
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  return absl::InternalError(absl::StrCat("unexpected field type of ", field->full_name()));
}

absl::Status ApplyOverride(const std::string& override_spec, Message* root) {
  const auto error = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("override '", override_spec, "': ", why));
  };
  const size_t eq = override_spec.find('=');
  if (eq == std::string::npos) return error("expected path=value");
  const std::string path(
      absl::StripAsciiWhitespace(absl::string_view(override_spec).substr(0, eq)));
  const std::string value = override_spec.substr(eq + 1);
  if (path.empty()) return error("empty field path before '='");

  const std::vector<std::string> parts = absl::StrSplit(path, '.');
  Message* msg = root;
  std::string walked;  // the path so far, for messages
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& part = parts[i];
    const Descriptor& type = *msg->GetDescriptor();
    if (part.empty()) return error(absl::StrCat("empty field name in path '", path, "'"));
    const FieldDescriptor* field = type.FindFieldByName(part);
    if (field == nullptr) {
      return error(absl::StrCat(type.full_name(), " has no field '", part,
                                "' (fields: ", FieldNames(type), ")"));
    }
    walked = walked.empty() ? part : absl::StrCat(walked, ".", part);
    if (field->is_repeated()) {
      return error(
          absl::StrCat("'", walked, "' is a repeated field; overrides set singular fields only"));
    }
    const bool is_message = field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE;
    if (i + 1 < parts.size()) {
      if (!is_message) {
        return error(
            absl::StrCat("'", walked, "' is a scalar and has no field '", parts[i + 1], "'"));
      }
      msg = msg->GetReflection()->MutableMessage(msg, field);
      continue;
    }
    if (is_message) {
      return error(absl::StrCat("'", walked, "' is a message; name one of its fields (",
                                FieldNames(*field->message_type()), ")"));
    }
    absl::Status status = SetScalar(msg, field, value);
    if (!status.ok()) return error(status.message());
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseTextProto(std::string_view text, Message* msg, std::string_view source_name) {
  CollectingErrorCollector collector(source_name, text);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&collector);
  std::unique_ptr<Message> parsed(msg->New());
  if (!parser.ParseFromString(std::string(text), parsed.get())) {
    if (collector.errors().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(source_name), ": not a valid ", msg->GetTypeName()));
    }
    return absl::InvalidArgumentError(absl::StrJoin(collector.errors(), "\n"));
  }
  msg->GetReflection()->Swap(msg, parsed.get());
  return absl::OkStatus();
}

absl::Status LoadTextProto(const std::string& path, Message* msg) {
  std::string contents;
  absl::Status status = ReadSmallFile(path, &contents);
  if (!status.ok()) return status;
  return ParseTextProto(contents, msg, path);
}

absl::Status ApplyOverrides(const std::vector<std::string>& overrides, Message* msg) {
  std::unique_ptr<Message> copy(msg->New());
  copy->CopyFrom(*msg);
  for (const std::string& spec : overrides) {
    absl::Status status = ApplyOverride(spec, copy.get());
    if (!status.ok()) return status;
  }
  msg->GetReflection()->Swap(msg, copy.get());
  return absl::OkStatus();
}

}  // namespace duet::rpc
