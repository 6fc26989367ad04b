// Checked reads of JSON input files (config.json, plans, latency tables, sensitivity
// metadata, tokenizer_config.json): every wrong type, missing field or malformed file is
// Error(kInput) (exit 3) "<file>: <field.path>: <problem>", never nlohmann's type_error
// escaping as an internal error (exit 1).
//
//   const nlohmann::json j = read_json_file(path);
//   const JsonObject plan(j, path);                         // Error unless an object
//   plan.get_int("mpq_plan_version");                       // required integer
//   plan.get_string("sensitivity_file", "");                // optional: missing or null -> ""
//   const JsonObject solver = plan.get_object("solver");    // errors name "solver.status"
//
// Optional fields treat JSON null like a missing key (Hugging Face configs write nulls for
// unset values); any other wrong type is an error.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace mpq {

/// Parses the whole file at `path` as JSON. Throws Error(kInput) "<path>: cannot open" or
/// "<path>: malformed JSON: <parser message>".
nlohmann::json read_json_file(const std::string& path);

/// Parses `text` (the content of, or a field inside, `file`; `field` names it in errors, ""
/// for the whole file). Throws Error(kInput) "<file>: <field>: malformed JSON: ...".
nlohmann::json parse_json_text(const std::string& text, const std::string& file, const std::string& field = "");

/// A JSON object of an input file with typed, checked accessors. Holds a reference: the JSON
/// must outlive it.
class JsonObject {
 public:
  /// Throws Error(kInput) "<file>: <path>: not a JSON object" unless `j` is an object
  /// (`path` "" means the whole file: "<file>: not a JSON object").
  JsonObject(const nlohmann::json& j, std::string file, std::string path = "");

  /// True when `key` is present and not null.
  bool has(const std::string& key) const;
  /// The raw value (nullptr when missing).
  const nlohmann::json* find(const std::string& key) const;

  /// Required fields: missing, null or of another type is Error(kInput).
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;       ///< integral JSON numbers only (no 1.5, no "1")
  double get_double(const std::string& key) const;     ///< any JSON number
  bool get_bool(const std::string& key) const;
  JsonObject get_object(const std::string& key) const;
  const nlohmann::json& get_array(const std::string& key) const;

  /// Optional fields: missing or null gives `fallback`; another type is Error(kInput).
  std::string get_string(const std::string& key, const std::string& fallback) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::optional<JsonObject> find_object(const std::string& key) const;

  /// "<path>.<key>" (or "<key>" at the top level), for messages.
  std::string field(const std::string& key) const;
  /// Throws Error(kInput) "<file>: <path.key>: <what>".
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;
  const nlohmann::json& json() const { return *j_; }
  const std::string& file() const { return file_; }

 private:
  const nlohmann::json& required(const std::string& key, const char* type) const;
  const nlohmann::json* j_;
  std::string file_, path_;
};

/// A JSON value's type for messages ("null", "number", "string", "array", ...).
std::string json_type_name(const nlohmann::json& v);

}  // namespace mpq
