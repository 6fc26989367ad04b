// The calibration forward driver (see linear_inputs.h).
#include "calibration/linear_inputs.h"

#include <omp.h>

#include <exception>
#include <filesystem>

#include "calibration/windows.h"
#include "lib/common/error.h"
#include "lib/model/llama.h"
#include "lib/model/tokenizer.h"

namespace mpq {
namespace fs = std::filesystem;

std::vector<int32_t> read_calibration_ids(const std::string& model_dir, const std::string& path, int64_t vocab) {
  std::vector<int32_t> ids;
  if (fs::path(path).extension() == ".i32") ids = read_token_file(path);
  else ids = Tokenizer::load(model_dir).encode(read_text_file(path));
  for (std::size_t t = 0; t < ids.size(); ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      throw_input(path, "token id " + std::to_string(ids[t]) + " at position " + std::to_string(t) +
                            " outside the vocabulary [0, " + std::to_string(vocab) + ")");
  return ids;
}

int calibration_threads(const LlamaParams<float>& params) {
  int64_t n_params = 0;
  params.for_each([&](const std::string&, const float*, Eigen::Index k) { n_params += k; });
  return window_threads(n_params);
}

void observe_linear_inputs(const LlamaConfig& c, const LlamaParams<float>& params, const std::vector<int32_t>& ids,
                           const CalibWindowOptions& opt, const std::vector<LinearInputObserver*>& observers) {
  MPQ_ASSERT(!observers.empty());
  const std::vector<int64_t> starts =
      calibration_window_starts(static_cast<int64_t>(ids.size()), opt.samples, opt.seq_len, opt.seed, false);
  const int P = static_cast<int>(observers.size());
  const int64_t N = static_cast<int64_t>(starts.size());
  std::exception_ptr failure;
#pragma omp parallel for num_threads(P) schedule(static, 1) if (P > 1)
  for (int64_t n = 0; n < N; ++n) {
    try {
      llama_loss_and_grad<float>(c, params, ids.data() + starts[static_cast<std::size_t>(n)], opt.seq_len, nullptr,
                                 observers[static_cast<std::size_t>(omp_get_thread_num())]);
    } catch (...) {
#pragma omp critical(mpq_calibration_forward_failure)
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

}  // namespace mpq
