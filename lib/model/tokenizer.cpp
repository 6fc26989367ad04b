#include "lib/model/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "lib/common/error.h"
#include "lib/common/json_fields.h"

namespace mpq {

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& folder) {
  namespace fs = std::filesystem;
  Tokenizer t;
  t.path_ = (fs::path(folder) / "tokenizer.model").string();
  if (!fs::exists(t.path_))
    throw_input(t.path_, "missing (only SentencePiece tokenizer.model is supported; "
                         "use --tokens FILE.i32 for pre-tokenized input)");
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = t.sp_->Load(t.path_);
  if (!status.ok()) throw_input(t.path_, "cannot load SentencePiece model: " + status.ToString());
  const fs::path cfg = fs::path(folder) / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    const nlohmann::json j = read_json_file(cfg.string());
    t.add_bos_ = JsonObject(j, cfg.string()).get_bool("add_bos_token", true);
  }
  return t;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) throw_input(path_, "encode failed: " + status.ToString());
  std::vector<int32_t> out;
  out.reserve(ids.size() + 1);
  if (add_bos_) out.push_back(bos_id());
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &s);
  return s;
}

int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int64_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

namespace {
std::string read_nonempty(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_input(path, "cannot open (missing file?)");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.empty()) throw_input(path, std::string("empty ") + what);
  return s;
}
}  // namespace

std::string read_text_file(const std::string& path) { return read_nonempty(path, "text"); }

std::vector<int32_t> read_token_file(const std::string& path) {
  const std::string bytes = read_nonempty(path, "token file");
  if (bytes.size() % 4 != 0)
    throw_input(path, "size " + std::to_string(bytes.size()) +
                          " bytes is not a multiple of 4 (int32 token ids expected)");
  std::vector<int32_t> ids(bytes.size() / 4);
  std::memcpy(ids.data(), bytes.data(), bytes.size());
  return ids;
}

}  // namespace mpq
