// Checked JSON reads (see json_fields.h).
#include "lib/common/json_fields.h"

#include <cstdint>
#include <fstream>
#include <sstream>

#include "lib/common/error.h"

namespace mpq {
namespace {

/// nlohmann's message without its "[json.exception.xxx] " prefix, on one line.
std::string parser_message(const std::exception& e) {
  std::string s = e.what();
  const std::size_t p = s.find("] ");
  if (!s.empty() && s[0] == '[' && p != std::string::npos) s = s.substr(p + 2);
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

}  // namespace

std::string json_type_name(const nlohmann::json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  return v.type_name();
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_input(path, "cannot open (missing file?)");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_input(path, "read failed");
  return parse_json_text(ss.str(), path);
}

nlohmann::json parse_json_text(const std::string& text, const std::string& file, const std::string& field) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw_input(file, (field.empty() ? "" : field + ": ") + "malformed JSON: " + parser_message(e));
  }
}

JsonObject::JsonObject(const nlohmann::json& j, std::string file, std::string path)
    : j_(&j), file_(std::move(file)), path_(std::move(path)) {
  if (!j.is_object())
    throw_input(file_, (path_.empty() ? "" : path_ + ": ") + "not a JSON object (got " + json_type_name(j) + ")");
}

std::string JsonObject::field(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

void JsonObject::fail(const std::string& key, const std::string& what) const { throw_input(file_, field(key) + ": " + what); }

const nlohmann::json* JsonObject::find(const std::string& key) const {
  const auto it = j_->find(key);
  return it == j_->end() ? nullptr : &*it;
}

bool JsonObject::has(const std::string& key) const {
  const nlohmann::json* v = find(key);
  return v && !v->is_null();
}

const nlohmann::json& JsonObject::required(const std::string& key, const char* type) const {
  const nlohmann::json* v = find(key);
  if (!v) fail(key, std::string("missing (expected ") + type + ")");
  if (v->is_null()) fail(key, std::string("null (expected ") + type + ")");
  return *v;
}

std::string JsonObject::get_string(const std::string& key) const {
  const nlohmann::json& v = required(key, "a string");
  if (!v.is_string()) fail(key, "expected a string, got " + json_type_name(v));
  return v.get<std::string>();
}

int64_t JsonObject::get_int(const std::string& key) const {
  const nlohmann::json& v = required(key, "an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    fail(key, "integer " + v.dump() + " does not fit in 64 bits");
  if (!v.is_number_integer()) fail(key, "expected an integer, got " + json_type_name(v));
  return v.get<int64_t>();
}

double JsonObject::get_double(const std::string& key) const {
  const nlohmann::json& v = required(key, "a number");
  if (!v.is_number()) fail(key, "expected a number, got " + json_type_name(v));
  return v.get<double>();
}

bool JsonObject::get_bool(const std::string& key) const {
  const nlohmann::json& v = required(key, "a boolean");
  if (!v.is_boolean()) fail(key, "expected a boolean, got " + json_type_name(v));
  return v.get<bool>();
}

JsonObject JsonObject::get_object(const std::string& key) const {
  return JsonObject(required(key, "an object"), file_, field(key));
}

const nlohmann::json& JsonObject::get_array(const std::string& key) const {
  const nlohmann::json& v = required(key, "an array");
  if (!v.is_array()) fail(key, "expected an array, got " + json_type_name(v));
  return v;
}

std::string JsonObject::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}
int64_t JsonObject::get_int(const std::string& key, int64_t fallback) const { return has(key) ? get_int(key) : fallback; }
double JsonObject::get_double(const std::string& key, double fallback) const {
  return has(key) ? get_double(key) : fallback;
}
bool JsonObject::get_bool(const std::string& key, bool fallback) const { return has(key) ? get_bool(key) : fallback; }

std::optional<JsonObject> JsonObject::find_object(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_object(key);
}

}  // namespace mpq
