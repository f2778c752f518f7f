#include "common/base/args.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace duet {

ArgParser::ArgParser(std::string command) : command_(std::move(command)) {}

void ArgParser::Add(Flag flag) { flags_.push_back(std::move(flag)); }

void ArgParser::AddString(const std::string& name, std::string* out, const std::string& help,
                          bool required, const std::string& short_name) {
  Add({.name = name, .short_name = short_name, .help = help, .required = required,
       .assign = [out](const std::string& v) {
         *out = v;
         return std::string();
       }});
}

void ArgParser::AddInt(const std::string& name, int64_t* out, const std::string& help,
                       const std::string& short_name) {
  Add({.name = name, .short_name = short_name, .help = help,
       .assign = [out](const std::string& v) {
         int64_t x;
         if (!absl::SimpleAtoi(v, &x)) return absl::StrCat("expected an integer, got '", v, "'");
         *out = x;
         return std::string();
       }});
}

void ArgParser::AddDouble(const std::string& name, double* out, const std::string& help) {
  Add({.name = name, .help = help, .assign = [out](const std::string& v) {
         double x;
         if (!absl::SimpleAtod(v, &x) || !std::isfinite(x)) {
           return absl::StrCat("expected a finite number, got '", v, "'");
         }
         *out = x;
         return std::string();
       }});
}

void ArgParser::AddBool(const std::string& name, bool* out, const std::string& help) {
  Add({.name = name, .help = help, .takes_value = false, .assign = [out](const std::string&) {
         *out = true;
         return std::string();
       }});
}

void ArgParser::AddIntList(const std::string& name, std::vector<int64_t>* out,
                           const std::string& help) {
  Add({.name = name, .help = help, .assign = [out](const std::string& v) {
         std::vector<int64_t> values;
         for (absl::string_view part : absl::StrSplit(v, ',')) {
           int64_t x;
           if (!absl::SimpleAtoi(part, &x)) {
             return absl::StrCat("expected comma-separated integers, got '", v, "'");
           }
           values.push_back(x);
         }
         *out = std::move(values);
         return std::string();
       }});
}

void ArgParser::AddRepeated(const std::string& name, std::vector<std::string>* out,
                            const std::string& help) {
  Add({.name = name, .help = help, .repeated = true, .assign = [out](const std::string& v) {
         out->push_back(v);
         return std::string();
       }});
}

void ArgParser::AddPositional(const std::string& name, std::string* out, const std::string& help,
                              bool required) {
  positionals_.push_back({name, help, out, required});
}

ArgParser::Flag* ArgParser::FindFlag(const std::string& token) {
  for (Flag& f : flags_) {
    if (token == "--" + f.name) return &f;
    if (!f.short_name.empty() && token == "-" + f.short_name) return &f;
  }
  return nullptr;
}

absl::Status ArgParser::Parse(const std::vector<std::string>& args) {
  size_t next_positional = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      help_requested_ = true;
      return absl::OkStatus();
    }
    bool is_flag = arg.size() > 1 && arg[0] == '-' &&
                   !(std::isdigit(static_cast<unsigned char>(arg[1])) || arg[1] == '.');
    if (!is_flag) {
      if (next_positional >= positionals_.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat(command_, ": unexpected argument '", arg, "'"));
      }
      *positionals_[next_positional++].out = arg;
      continue;
    }
    std::string key = arg;
    std::string value;
    bool has_inline_value = false;
    if (size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      key = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_inline_value = true;
    }
    Flag* flag = FindFlag(key);
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(command_, ": unknown flag '", key,
                                                     "' (see '", command_, " --help')"));
    }
    if (flag->set && !flag->repeated) {
      return absl::InvalidArgumentError(
          absl::StrCat(command_, ": flag --", flag->name, " given more than once"));
    }
    if (flag->takes_value && !has_inline_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat(command_, ": flag --", flag->name, " needs a value"));
      }
      value = args[++i];
    } else if (!flag->takes_value && has_inline_value) {
      return absl::InvalidArgumentError(
          absl::StrCat(command_, ": flag --", flag->name, " takes no value"));
    }
    std::string error = flag->assign(value);
    if (!error.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(command_, ": flag --", flag->name, ": ", error));
    }
    flag->set = true;
  }
  for (const Flag& f : flags_) {
    if (f.required && !f.set) {
      return absl::InvalidArgumentError(
          absl::StrCat(command_, ": missing required flag --", f.name));
    }
  }
  for (size_t p = next_positional; p < positionals_.size(); ++p) {
    if (positionals_[p].required) {
      return absl::InvalidArgumentError(
          absl::StrCat(command_, ": missing argument ", positionals_[p].name));
    }
  }
  return absl::OkStatus();
}

bool ArgParser::WasSet(const std::string& name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return f.set;
  }
  return false;
}

std::string ArgParser::Usage() const {
  std::string out = absl::StrCat("usage: ", command_);
  for (const Positional& p : positionals_) {
    absl::StrAppend(&out, p.required ? " " : " [", p.name, p.required ? "" : "]");
  }
  absl::StrAppend(&out, " [flags]\n");
  for (const Positional& p : positionals_) {
    absl::StrAppend(&out, "  ", p.name, "\n      ", p.help, "\n");
  }
  for (const Flag& f : flags_) {
    absl::StrAppend(&out, "  --", f.name, f.short_name.empty() ? "" : ", -" + f.short_name,
                    f.takes_value ? " VALUE" : "", f.required ? " (required)" : "", "\n      ",
                    f.help, "\n");
  }
  return out;
}

}  // namespace duet
