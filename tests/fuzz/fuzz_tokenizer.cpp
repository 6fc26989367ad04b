// libFuzzer target: tokenizer loading (lib/model/tokenizer.h). Input: byte 0 selects what
// the rest is. Even: tokenizer.model (SentencePiece ModelProto bytes). Odd:
// tokenizer_config.json, beside stories260K's real tokenizer.model (skipped when the real
// data is absent). A loaded tokenizer encodes and decodes a fixed sentence.
#include <cstdint>
#include <filesystem>

#include "lib/model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace mpq;
  namespace fs = std::filesystem;
  if (size < 1) return 0;
  static const std::string real = fuzz::data_dir().empty() ? "" : fuzz::data_dir() + "/models/stories260K-hf/tokenizer.model";
  const std::string dir = fuzz::scratch() + "/tok";
  fs::create_directories(dir);
  std::error_code ec;
  if (data[0] & 1) {
    if (real.empty()) return 0;
    fs::copy_file(real, dir + "/tokenizer.model", fs::copy_options::skip_existing, ec);
    fuzz::write_file("tok/tokenizer_config.json", data + 1, size - 1);
  } else {
    fs::remove(dir + "/tokenizer_config.json", ec);
    fuzz::write_file("tok/tokenizer.model", data + 1, size - 1);
  }
  fuzz::expect_clean([&] {
    const Tokenizer t = Tokenizer::load(dir);
    const std::vector<int32_t> ids = t.encode("Once upon a time, Lily saw a big dog.");
    for (int32_t id : ids)
      if (id < 0 || id >= t.vocab_size()) std::abort();
    (void)t.decode(ids);
  });
  if (!(data[0] & 1)) fs::remove(dir + "/tokenizer.model", ec);
  return 0;
}
