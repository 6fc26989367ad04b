// Shared shell of every mpq tool: error-to-exit-code mapping, progress lines, JSON output.
// Header-only; included by tools/<name>/main.cpp only.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "lib/common/blas_runtime.h"
#include "lib/common/error.h"

namespace mpq::tool {

/// Parses argv with `app`, runs `body`, and maps failures to the documented exit codes:
/// CLI11 usage errors -> 2, mpq::Error -> its code, anything else -> 1 (internal).
/// Errors print one line on stderr: "<tool>: error: <message>". The last stderr line
/// reports the elapsed time. First, OpenBLAS's kernel choice is checked (may re-execute the
/// tool once, lib/common/blas_runtime.h).
inline int run(CLI::App& app, int argc, char** argv, const std::function<int()>& body) {
  ensure_blas_core(argv);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string name = app.get_name();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", name.c_str(), e.what());
    return static_cast<int>(ExitCode::kUsage);
  }
  int rc = 0;
  try {
    rc = body();
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", name.c_str(), e.what());
    rc = static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", name.c_str(), e.what());
    rc = static_cast<int>(ExitCode::kInternal);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "%s: done in %.2f s (exit %d)\n", name.c_str(), secs, rc);
  return rc;
}

/// Writes pretty JSON atomically (temp file + rename). Throws Error(kOutput).
inline void write_json(const std::string& path, const nlohmann::json& j) {
  const std::string s = j.dump(2) + "\n";
  write_file_atomic(path, s.data(), s.size());
}

/// "1m05s" style duration for ETAs.
inline std::string format_seconds(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
  else std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return buf;
}

/// The version string every tool prints and records.
inline std::string version() { return std::string("mpq ") + MPQ_VERSION; }

}  // namespace mpq::tool
