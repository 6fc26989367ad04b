// libFuzzer target: the safetensors reader (formats/safetensors.h), header and data checks.
// Input: byte 0 selects the form. Odd: bytes [1, N) are a whole .safetensors file. Even:
// bytes [1, N) are fuzz_util.h's header-only form (data size + header JSON), so mutations
// land in the JSON. Every tensor that opens is decoded (to_f32 for float dtypes) and the
// file is opened again as a one-file TensorStore.
#include <cstdint>

#include "formats/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace mpq;
  if (size < 1) return 0;
  const std::string path = (data[0] & 1) ? fuzz::write_file("model.safetensors", data + 1, size - 1)
                                         : fuzz::write_file("model.safetensors", fuzz::safetensors_from_header(data + 1, size - 1));
  fuzz::expect_clean([&] {
    const auto f = SafetensorsFile::open(path);
    double sum = 0;
    for (const std::string& name : f->names()) {
      const TensorView& t = f->get(name);
      if (t.numel() < 0 || t.nbytes != static_cast<std::size_t>(t.numel()) * dtype_size(t.dtype)) std::abort();
      if (t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16)
        for (float v : to_f32(t)) sum += v;
    }
    for (const auto& kv : f->metadata()) sum += static_cast<double>(kv.second.size());
    const TensorStore store = TensorStore::open(path);
    if (store.names().size() != f->names().size()) std::abort();
    (void)sum;
  });
  return 0;
}
