// mpq-merge: combine the parts of a split run (mpq-sensitivity or mpq-pack with --layers A:B
// on ranges that tile the model) into exactly what one run over all layers writes.
// See docs/cli.md.
#include <cstdio>
#include <filesystem>

#include "formats/sensitivity_file.h"
#include "lib/pack/merge_parts.h"
#include "tools/common.h"

int main(int argc, char** argv) {
  using namespace mpq;
  namespace fs = std::filesystem;
  CLI::App app{"Combine the parts of a split run (mpq-sensitivity or mpq-pack --layers A:B) into the file or "
               "folder one run writes; parts of different inputs, overlapping or missing layers are refused",
               "mpq-merge"};
  std::vector<std::string> parts;
  std::string out;
  bool force = false, quiet = false;
  app.add_option("parts", parts, "Part files (sensitivity .safetensors) or part folders (packed models), any order")
      ->required();
  app.add_option("--out", out, "Output: a sensitivity file, or a packed model folder (written atomically)")->required();
  app.add_flag("--force", force, "Replace an existing output");
  app.add_flag("-q,--quiet", quiet, "No progress on stderr");
  app.set_version_flag("--version", tool::version());
  return tool::run(app, argc, argv, [&]() -> int {
    std::error_code ec;
    const bool folders = fs::is_directory(parts.front(), ec);
    for (const std::string& p : parts) {
      if (!fs::exists(p, ec)) throw_input(p, "no such file or folder");
      if (fs::is_directory(p, ec) != folders)
        throw Error(ExitCode::kUsage, "mix of part files and part folders: give sensitivity files or packed folders");
    }
    if (!folders) {
      if (fs::exists(out, ec) && !force) throw_output(out, "exists (use --force to replace it)");
      merge_sensitivity_files(parts, out);
      std::printf("wrote        %s (sensitivity file from %zu parts)\n", out.c_str(), parts.size());
      return 0;
    }
    std::string cmd;
    for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);
    const PackReport r = merge_packed_parts(parts, out, force, cmd, [&](std::size_t i, std::size_t n, const std::string& d) {
      if (!quiet) std::fprintf(stderr, "[%zu/%zu] %s\n", i, n, d.c_str());
    });
    std::printf("wrote        %s (packed model from %zu parts)\n", out.c_str(), parts.size());
    std::printf("quantized    %lld weights, %zu bytes, %.4f bpw\n", static_cast<long long>(r.quantized_params),
                r.quantized_bytes, r.quantized_bpw());
    std::printf("whole model  %lld params, %zu bytes, %.4f bpw\n", static_cast<long long>(r.total_params),
                r.total_bytes, r.model_bpw());
    return 0;
  });
}
