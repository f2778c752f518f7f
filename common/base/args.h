// A small strict command-line parser for the `duet` subcommands.
//
// Accepts "--name value", "--name=value", "-x value" short aliases, boolean "--flag" and
// positional arguments. Anything unknown, a missing value, or a value that does not parse is
// an INVALID_ARGUMENT error naming the flag, so every CLI mistake yields one clear line.
#ifndef DUET_COMMON_BASE_ARGS_H_
#define DUET_COMMON_BASE_ARGS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace duet {

class ArgParser {
 public:
  // `command` names the subcommand in usage and error text, e.g. "duet generate".
  explicit ArgParser(std::string command);

  // Each Add* registers a flag; `name` is without dashes ("top-k"). `short_name` may be empty
  // or one letter ("n" for "-n"). The target keeps its value when the flag is absent.
  void AddString(const std::string& name, std::string* out, const std::string& help,
                 bool required = false, const std::string& short_name = "");
  void AddInt(const std::string& name, int64_t* out, const std::string& help,
              const std::string& short_name = "");
  void AddDouble(const std::string& name, double* out, const std::string& help);
  // A flag without a value: present means true.
  void AddBool(const std::string& name, bool* out, const std::string& help);
  // Comma-separated integers, e.g. "--prompt-len 128,512".
  void AddIntList(const std::string& name, std::vector<int64_t>* out, const std::string& help);
  // A flag that may be repeated; every value is appended.
  void AddRepeated(const std::string& name, std::vector<std::string>* out,
                   const std::string& help);
  // Positional arguments are filled in order of registration.
  void AddPositional(const std::string& name, std::string* out, const std::string& help,
                     bool required = true);

  // Parses args (the subcommand's own arguments, without the program and subcommand names).
  // "--help"/"-h" makes help_requested() true and returns OK.
  absl::Status Parse(const std::vector<std::string>& args);

  bool help_requested() const { return help_requested_; }
  bool WasSet(const std::string& name) const;
  std::string Usage() const;

 private:
  struct Flag {
    std::string name;
    std::string short_name;
    std::string help;
    bool takes_value = true;
    bool required = false;
    bool repeated = false;
    bool set = false;
    // Stores the text value; returns an error message, empty on success.
    std::function<std::string(const std::string&)> assign;
  };
  struct Positional {
    std::string name;
    std::string help;
    std::string* out;
    bool required;
  };

  Flag* FindFlag(const std::string& token);
  void Add(Flag flag);

  std::string command_;
  std::vector<Flag> flags_;
  std::vector<Positional> positionals_;
  bool help_requested_ = false;
};

}  // namespace duet

#endif  // DUET_COMMON_BASE_ARGS_H_
