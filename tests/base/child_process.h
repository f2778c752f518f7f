// A child process for tests that run Duet's executables: argv exec'd with stdout on a pipe
// (stderr inherited), read line by line; killed with SIGKILL if still running at destruction.
#ifndef DUET_TESTS_BASE_CHILD_PROCESS_H_
#define DUET_TESTS_BASE_CHILD_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace duet::testing {

class Process {
 public:
  // argv[0] is the executable's path. `stderr_path` non-empty: the child's stderr goes to that
  // file (truncated) instead of the test's.
  explicit Process(const std::vector<std::string>& argv, const std::string& stderr_path = "") {
    // Everything the child needs is prepared before fork: only async-signal-safe calls after.
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int err = stderr_path.empty()
                        ? -1
                        : open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int fds[2];
    if ((!stderr_path.empty() && err < 0) || pipe2(fds, O_CLOEXEC) != 0) std::abort();
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      if (err >= 0) dup2(err, STDERR_FILENO);
      execv(args[0], args.data());
      _exit(127);
    }
    if (err >= 0) close(err);
    close(fds[1]);
    out_ = fdopen(fds[0], "r");
  }
  ~Process() {
    if (pid_ > 0 && !waited_) {
      kill(pid_, SIGKILL);
      Wait();
    }
    if (out_ != nullptr) fclose(out_);
  }

  // The next stdout line without its newline; "" at the end of the output.
  std::string ReadLine() {
    char* line = nullptr;
    size_t size = 0;
    const ssize_t n = getline(&line, &size, out_);
    std::string s = n > 0 ? std::string(line, static_cast<size_t>(n)) : "";
    free(line);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  // The rest of stdout, to its end (empty lines included).
  std::string ReadAll() {
    std::string all;
    char buffer[4096];
    size_t n = 0;
    while ((n = fread(buffer, 1, sizeof(buffer), out_)) > 0) all.append(buffer, n);
    return all;
  }
  void Signal(int signal) { kill(pid_, signal); }
  // The exit code (128 + signal when killed).
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    waited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  bool waited_ = false;
};

}  // namespace duet::testing

#endif  // DUET_TESTS_BASE_CHILD_PROCESS_H_
