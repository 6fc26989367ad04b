// SHA-256 of files, through OpenSSL's EVP interface (libssl-dev).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace mpq {

/// Lower-case hex SHA-256 of the file's bytes. Throws Error(kInput) if it cannot be read.
std::string sha256_file(const std::string& path);

/// SHA-256 of a model folder's weight inputs, keyed by file name: each path in
/// `weight_files` (the safetensors files read), model.safetensors.index.json when present,
/// and config.json. Recorded by mpq-pack's manifest and mpq-sensitivity's metadata.
/// Throws Error(kInput) if a file cannot be read.
std::map<std::string, std::string> sha256_model_inputs(const std::string& model_dir,
                                                       const std::vector<std::string>& weight_files);

}  // namespace mpq
