// Element types of safetensors tensors (https://github.com/huggingface/safetensors, format spec).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace mpq {

/// Tensor element types mpq reads and writes. Names follow the safetensors spec
/// ("F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "U8", "I8", "I16", "I32", "I64").
enum class DType { F32, F16, BF16, F8_E4M3, F8_E5M2, U8, I8, I16, I32, I64 };

/// Size of one element in bytes.
std::size_t dtype_size(DType t);
/// The safetensors name of the type, e.g. "F8_E4M3".
const char* dtype_name(DType t);
/// dtype_name() in lower case ("f32", "bf16"): the format label of a dense tensor in
/// manifests, plans and reports.
std::string dtype_name_lower(DType t);
/// Parses a safetensors dtype name; std::nullopt for names mpq does not support.
std::optional<DType> parse_dtype(const std::string& name);

}  // namespace mpq
