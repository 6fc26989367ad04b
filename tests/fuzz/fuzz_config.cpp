// libFuzzer target: config.json parsing and validation (formats/hf_config.h) up to a loaded
// model and a 3-token forward pass. Input: the config.json text. The folder holds a random
// model of the stories260K-hf architecture, so stories260K's real config.json is a valid
// seed and sizes that disagree with the tensors must be refused before any allocation (run
// with -malloc_limit_mb to catch one that is not).
#include <cstdint>

#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "lib/model/llama.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace mpq;
  static const std::string dir = fuzz::stories_shaped_model("config-model");
  static const TensorStore store = TensorStore::open(dir);
  const std::string path = fuzz::write_file("config-model/config.json", data, size);
  fuzz::expect_clean([&] {
    const LlamaConfig c = load_llama_config(path);
    check_config_against_tensors(c, store);
    for (int i = 0; i < 7; ++i) linear_shape(c, i);
    if (rope_inv_freq(c).size() != static_cast<std::size_t>(c.head_dim / 2)) std::abort();
    const LlamaModel m = LlamaModel::load(dir);
    const int32_t tokens[3] = {1, 2, 3};
    const MatrixRM logits = m.forward(tokens, 3);
    if (logits.rows() != 3 || logits.cols() != c.vocab_size) std::abort();
  });
  return 0;
}
