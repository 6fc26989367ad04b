// mpq error handling: user errors are exceptions carrying a documented exit code;
// invariant violations are MPQ_ASSERT (abort with expression and file:line).
//
// Exit codes (docs/cli.md is the user-facing copy of this table):
//   0  success
//   1  internal error (a bug: an unexpected exception)
//   2  usage error (bad or missing command-line flag)
//   3  input error (missing/malformed file, bad config, unsupported architecture,
//      shape mismatch, NaN/Inf weights, empty text)
//   4  output error (cannot create or write the output)
//   5  regression gate crossed (mpq-eval --max-ppl / --max-increase-pct)
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mpq {

/// Process exit codes shared by every mpq tool (see docs/cli.md).
enum class ExitCode : int {
  kOk = 0,
  kInternal = 1,
  kUsage = 2,
  kInput = 3,
  kOutput = 4,
  kGate = 5,
};

/// A user-facing error: a one-line message plus the exit code the tool returns.
/// Messages name the file and the field or value, e.g.
/// "model.safetensors: tensor 'x.weight': data_offsets [0, 9) past end of data (8 bytes)".
class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

/// Throws an input error (exit code 3) formatted as "<file>: <what>".
[[noreturn]] inline void throw_input(const std::string& file, const std::string& what) {
  throw Error(ExitCode::kInput, file + ": " + what);
}

/// Throws an output error (exit code 4) formatted as "<file>: <what>".
[[noreturn]] inline void throw_output(const std::string& file, const std::string& what) {
  throw Error(ExitCode::kOutput, file + ": " + what);
}

}  // namespace mpq

/// Invariant check for programming errors (not user input): aborts with file:line.
#define MPQ_ASSERT(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "%s:%d: internal error: assertion failed: %s\n", __FILE__, \
                   __LINE__, #cond);                                                  \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)
