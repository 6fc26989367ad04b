// Text -> token ids for Llama-family models through libsentencepiece.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace mpq {

/// A SentencePiece tokenizer (`tokenizer.model`) with the BOS rule of tokenizer_config.json
/// ("add_bos_token", default true as in transformers' LlamaTokenizer).
class Tokenizer {
 public:
  /// Loads `<folder>/tokenizer.model` and, if present, `<folder>/tokenizer_config.json`.
  /// Throws Error(kInput) naming the file when tokenizer.model is missing or unreadable.
  static Tokenizer load(const std::string& folder);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  /// Token ids of `text`, with BOS first when add_bos() (the HF LlamaTokenizer convention:
  /// [bos] + sp.encode(text)). Throws Error(kInput) if sentencepiece fails.
  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  int32_t bos_id() const;
  bool add_bos() const { return add_bos_; }
  int64_t vocab_size() const;

 private:
  Tokenizer() = default;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  bool add_bos_ = true;
  std::string path_;
};

/// Reads a pre-tokenized file of int32 little-endian ids. Throws Error(kInput) if missing,
/// empty, or its size is not a multiple of 4.
std::vector<int32_t> read_token_file(const std::string& path);

/// Reads a whole text file. Throws Error(kInput) if missing or empty.
std::string read_text_file(const std::string& path);

}  // namespace mpq
