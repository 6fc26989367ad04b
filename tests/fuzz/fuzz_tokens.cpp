// libFuzzer target: text and .i32 input as mpq-eval --text/--tokens, mpq-sensitivity --calib
// and mpq-pack --act-calib read it, through calibration windows and a perplexity pass.
// Input: byte 0 bit 0 = form (1: .i32 ids, 0: text, tokenized with stories260K's real
// tokenizer.model, skipped when absent); bytes 1-4 = --samples (int32 LE, as a user may
// give any value), bytes 5-6 = --seq-len, byte 7 = --ctx - 2 (a tiny random model: vocab 512,
// hidden 16, one layer); the rest is the file.
#include <cstdint>
#include <cstring>
#include <optional>

#include "calibration/windows.h"
#include "lib/eval/perplexity.h"
#include "lib/model/llama.h"
#include "lib/model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace mpq;
  if (size < 8) return 0;
  static const LlamaModel model = [] {
    const LlamaConfig c = llama_config(16, 32, 1, 2, 1, 512);
    return LlamaModel(c, random_llama_weights(c, 1, 0.1f));
  }();
  static const std::string tok_dir = fuzz::data_dir().empty() ? "" : fuzz::data_dir() + "/models/stories260K-hf";
  const bool ids_form = data[0] & 1;
  if (!ids_form && tok_dir.empty()) return 0;
  int32_t samples = 0;
  std::memcpy(&samples, data + 1, 4);
  const int64_t seq_len = data[5] | (data[6] << 8), ctx = 2 + data[7];
  const std::string path = fuzz::write_file(ids_form ? "in.i32" : "in.txt", data + 8, size - 8);
  fuzz::expect_clean(
      [&] {
        static std::optional<Tokenizer> tok;
        if (!ids_form && !tok) tok.emplace(Tokenizer::load(tok_dir));
        const std::vector<int32_t> ids = ids_form ? read_token_file(path) : tok->encode(read_text_file(path));
        try {
          calibration_window_starts(static_cast<int64_t>(ids.size()), samples, seq_len, 0, data[0] & 2);
        } catch (const Error& e) {
          if (e.code() != ExitCode::kInput && e.code() != ExitCode::kUsage) throw;
        }
        PerplexityOptions opt;
        opt.ctx = ctx;
        opt.max_tokens = 512;
        evaluate_perplexity(model, ids, opt);
      },
      {ExitCode::kInput, ExitCode::kUsage});
  return 0;
}
