// SHA-256 of files, through OpenSSL's EVP interface (libssl-dev).
#pragma once

#include <string>

namespace mpq {

/// Lower-case hex SHA-256 of the file's bytes. Throws Error(kInput) if it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace mpq
