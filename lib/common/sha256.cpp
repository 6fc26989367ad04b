#include "lib/common/sha256.h"

#include <openssl/evp.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "lib/common/error.h"

namespace mpq {

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_input(path, "cannot open for hashing");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  MPQ_ASSERT(ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(in.gcount()));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &n);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned int i = 0; i < n; ++i) {
    s += hex[md[i] >> 4];
    s += hex[md[i] & 15];
  }
  return s;
}

std::map<std::string, std::string> sha256_model_inputs(const std::string& model_dir,
                                                       const std::vector<std::string>& weight_files) {
  namespace fs = std::filesystem;
  std::map<std::string, std::string> out;
  for (const auto& f : weight_files) out[fs::path(f).filename().string()] = sha256_file(f);
  const fs::path index = fs::path(model_dir) / "model.safetensors.index.json";
  if (fs::exists(index)) out[index.filename().string()] = sha256_file(index.string());
  out["config.json"] = sha256_file((fs::path(model_dir) / "config.json").string());
  return out;
}

}  // namespace mpq
