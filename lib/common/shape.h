// Tensor shapes as text, for error messages and tool output.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpq {

/// "[a, b, c]" for shape {a, b, c}; "[]" for a scalar's empty shape.
std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace mpq
