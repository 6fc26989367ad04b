// libFuzzer target: the sensitivity-file reader (formats/sensitivity_file.h) as mpq-search
// and mpq-pack use it: the safetensors layer, the "traces" metadata and every module's
// fisher / act_fisher / hessian_diag of the stories260K-hf architecture. Input: byte 0 odd =
// a whole file, even = fuzz_util.h's header-only form.
#include <cstdint>

#include "formats/safetensors.h"
#include "formats/sensitivity_file.h"
#include "lib/model/llama.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace mpq;
  if (size < 1) return 0;
  static const LlamaConfig c = fuzz::stories_config();
  const std::string path = (data[0] & 1) ? fuzz::write_file("sens.safetensors", data + 1, size - 1)
                                         : fuzz::write_file("sens.safetensors", fuzz::safetensors_from_header(data + 1, size - 1));
  fuzz::expect_clean([&] {
    const TensorStore sens = TensorStore::open(path);
    double sum = 0;
    for (const auto& [module, trace] : read_hutchinson_traces(sens)) sum += trace + static_cast<double>(module.size());
    for (int64_t l = 0; l < c.num_layers; ++l)
      for (int i = 0; i < 7; ++i) {
        const std::string m = "model.layers." + std::to_string(l) + "." + kLinearNames[static_cast<std::size_t>(i)];
        const auto [rows, cols] = linear_shape(c, i);
        for (const auto& [suffix, shape] : {std::pair{".fisher", std::vector<int64_t>{rows, cols}},
                                            {".act_fisher", {cols}}, {".hessian_diag", {cols}}})
          if (const TensorView* t = find_sensitivity_tensor(sens, m + suffix, shape))
            for (float v : to_f32(*t)) sum += v;
      }
    (void)sum;
  });
  return 0;
}
