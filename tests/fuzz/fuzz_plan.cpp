// libFuzzer target: the plan reader mpq-pack --plan uses (lib/search/search.h read_plan).
// Input: plan.json text.
#include <cstdint>

#include "lib/search/search.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace mpq;
  const std::string path = fuzz::write_file("plan.json", data, size);
  fuzz::expect_clean([&] {
    std::string sens, sha;
    const auto plan = read_plan(path, &sens, &sha);
    for (const auto& [module, e] : plan)
      if (e.format != "source" && !e.quantizer) std::abort();
  });
  return 0;
}
