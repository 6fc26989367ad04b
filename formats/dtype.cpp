// Element types of safetensors tensors: one table of {type, name, size} drives all three
// functions, so adding a type is adding a row.
#include "formats/dtype.h"

#include <cctype>

#include "lib/common/error.h"  // MPQ_ASSERT

namespace mpq {

namespace {

struct DTypeRow {
  DType type;
  const char* name;  ///< safetensors spelling
  std::size_t size;  ///< bytes per element
};

// Names and sizes from the safetensors spec (huggingface/safetensors, "Format").
constexpr DTypeRow kDTypes[] = {
    {DType::F32, "F32", 4},         {DType::F16, "F16", 2},         {DType::BF16, "BF16", 2},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1}, {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},           {DType::I16, "I16", 2},         {DType::I32, "I32", 4},
    {DType::I64, "I64", 8},
};

/// The table row of `t`; every enumerator has one (a missing row is a bug).
const DTypeRow& row(DType t) {
  for (const DTypeRow& r : kDTypes) {
    if (r.type == t) return r;
  }
  MPQ_ASSERT(false && "DType missing from kDTypes");
  return kDTypes[0];  // unreachable
}

}  // namespace

std::size_t dtype_size(DType t) { return row(t).size; }

const char* dtype_name(DType t) { return row(t).name; }

std::string dtype_name_lower(DType t) {
  std::string s = dtype_name(t);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::optional<DType> parse_dtype(const std::string& name) {
  for (const DTypeRow& r : kDTypes) {
    if (name == r.name) return r.type;
  }
  return std::nullopt;
}

}  // namespace mpq
