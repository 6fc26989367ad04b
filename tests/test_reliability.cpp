// Issue [8/12] reliability: one test per defect class, each failing before its fix.
//   - wrong JSON types (config.json, plan, sensitivity metadata, tokenizer_config.json,
//     latency table) are exit 3 naming the file and the field, not exit 1;
//   - hostile config dimensions (num_hidden_layers 1e6 .. 2^62, head_dim 2^62, products that
//     overflow) are exit 3 before any allocation, in every tool that reads a model;
//   - output staging (formats/output_dir.h): one atomic exchange for --force, the fallback
//     and its failing rollback (exit 4), stale "<out>.partial-<pid>" cleanup, restore of a
//     "<out>.old-<pid>" left by a killed run, "--out DIR/", an existing regular file;
//   - a plan naming a non-linear tensor (model.embed_tokens) is exit 3;
//   - mpq-eval --ctx beyond max_position_embeddings is refused without --allow-long-ctx;
//   - mpq-search --cost hawq on a file without Hutchinson traces is exit 3 (it used to
//     read the 0 written for uncomputed traces and return a meaningless plan).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "calibration/windows.h"
#include "formats/hf_config.h"
#include "formats/output_dir.h"
#include "formats/safetensors.h"
#include "formats/sensitivity_file.h"
#include "lib/common/error.h"
#include "lib/common/json_fields.h"
#include "lib/model/tokenizer.h"
#include "lib/search/search.h"
#include "tests/test_util.h"

namespace mpq {
namespace {
namespace fs = std::filesystem;

using test::error_lines;
using test::ToolRun;
const auto tool = &test::tool_path;
const auto run = &test::run_tool;

std::string tiny_model(const std::string& tag) {
  const std::string dir = test::scratch_dir(tag);
  test::write_tiny_llama(dir, test::TinyLlamaSpec{});
  return dir;
}

// 300 token ids of the tiny model's vocabulary (128) as an .i32 file in `dir`.
std::string tiny_tokens(const std::string& dir, int n = 300) {
  std::vector<uint8_t> b(static_cast<std::size_t>(n) * 4);
  for (int i = 0; i < n; ++i) {
    const int32_t id = (i * 37 + 11) % 128;
    std::memcpy(b.data() + 4 * i, &id, 4);
  }
  test::write_bytes(dir + "/ids.i32", b);
  return dir + "/ids.i32";
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

void edit_config(const std::string& model, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = read_json(model + "/config.json");
  edit(j);
  test::write_text(model + "/config.json", j.dump(2));
}

// rc `code`, exactly one error line, naming every string of `names`.
void expect_error_line(const ToolRun& r, int code, const std::vector<std::string>& names) {
  EXPECT_EQ(r.rc, code) << r.out;
  const auto lines = error_lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  for (const auto& n : names) EXPECT_NE(lines[0].find(n), std::string::npos) << "'" << n << "' not in: " << lines[0];
}

// Error with `code` whose message contains every string of `names`.
template <typename F>
void expect_throws(F&& f, ExitCode code, const std::vector<std::string>& names) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.code()), static_cast<int>(code)) << e.what();
    for (const auto& n : names) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << n << " not in: " << e.what();
  }
}

// A pid that is certainly dead: a child that exited and was reaped.
long dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return static_cast<long>(pid);
}

// --- Wrong JSON types -----------------------------------------------------------------

TEST(JsonTypes, ConfigHiddenActNotAStringIsInputError) {
  const std::string m = tiny_model("rel-act");
  const std::string ids = tiny_tokens(m);
  for (const nlohmann::json& bad : {nlohmann::json(nullptr), nlohmann::json(5), nlohmann::json::array()}) {
    edit_config(m, [&](nlohmann::json& j) { j["hidden_act"] = bad; });
    expect_error_line(run(tool("mpq-inspect") + " " + m), 3, {"config.json", "hidden_act"});
    expect_error_line(run(tool("mpq-eval") + " --model " + m + " --tokens " + ids + " --ctx 32 -q"), 3,
                      {"config.json", "hidden_act"});
  }
}

TEST(JsonTypes, ConfigFieldsOfTheWrongTypeNameTheField) {
  const std::string m = tiny_model("rel-cfgtypes");
  const std::vector<std::pair<std::string, nlohmann::json>> cases = {
      {"architectures", "LlamaForCausalLM"}, {"hidden_size", "64"},        {"num_hidden_layers", 2.5},
      {"rms_norm_eps", "1e-5"},              {"tie_word_embeddings", 1},   {"rope_scaling", nlohmann::json::array()},
      {"torch_dtype", 32},                   {"eos_token_id", "2"},        {"quantization_config", "nvfp4"},
      {"max_position_embeddings", -1},       {"rope_theta", 0}};
  const nlohmann::json good = read_json(m + "/config.json");
  for (const auto& [key, value] : cases) {
    nlohmann::json j = good;
    j[key] = value;
    test::write_text(m + "/config.json", j.dump());
    expect_error_line(run(tool("mpq-inspect") + " " + m), 3, {"config.json", key});
  }
  nlohmann::json j = good;
  j["rope_scaling"] = {{"rope_type", 3}};
  test::write_text(m + "/config.json", j.dump());
  expect_error_line(run(tool("mpq-inspect") + " " + m), 3, {"config.json", "rope_scaling.rope_type"});
}

// A hand-written plan: every linear of the tiny model in fp8.
nlohmann::json fp8_plan() {
  nlohmann::json tensors = nlohmann::json::object();
  for (int l = 0; l < 2; ++l)
    for (const char* p : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      tensors["model.layers." + std::to_string(l) + "." + p] = {{"candidate", "fp8"}};
  return {{"mpq_plan_version", 1}, {"solver", {{"status", "optimal"}}}, {"tensors", tensors}};
}

TEST(JsonTypes, PlanFieldsOfTheWrongTypeAreInputErrors) {
  const std::string m = tiny_model("rel-plan");
  const std::string dir = test::scratch_dir("rel-plan-out");
  const std::string plan = dir + "/plan.json", out = dir + "/packed";
  const std::string pack = tool("mpq-pack") + " --model " + m + " --plan " + plan + " --out " + out + " -q";
  test::write_text(plan, fp8_plan().dump());
  ASSERT_EQ(run(pack).rc, 0);  // the plan itself is good
  fs::remove_all(out);
  const std::vector<std::pair<std::string, nlohmann::json>> cases = {
      {"mpq_plan_version", "1"}, {"solver", "optimal"}, {"sensitivity_file", 5}, {"inputs_sha256", nlohmann::json::array()},
      {"tensors", nlohmann::json::array()}};
  for (const auto& [key, value] : cases) {
    nlohmann::json j = fp8_plan();
    j[key] = value;
    test::write_text(plan, j.dump());
    expect_error_line(run(pack), 3, {plan, key});
    EXPECT_FALSE(fs::exists(out));
  }
  nlohmann::json j = fp8_plan();
  j["solver"]["status"] = 1;
  test::write_text(plan, j.dump());
  expect_error_line(run(pack), 3, {plan, "solver.status"});
  j = fp8_plan();
  j["inputs_sha256"] = {{"sensitivity", false}};
  test::write_text(plan, j.dump());
  expect_error_line(run(pack), 3, {plan, "inputs_sha256.sensitivity"});
  j = fp8_plan();
  j["tensors"]["model.layers.0.mlp.up_proj"] = {{"candidate", 4}};
  test::write_text(plan, j.dump());
  expect_error_line(run(pack), 3, {plan, "model.layers.0.mlp.up_proj.candidate"});
}

// A sensitivity file with <module>.fisher for every linear of the tiny model and `traces`
// as its "traces" metadata (raw text).
std::string write_sensitivity(const std::string& dir, const std::string& traces, bool fisher = true) {
  SafetensorsWriter w;
  if (fisher)
    for (int l = 0; l < 2; ++l)
      for (int i = 0; i < 7; ++i) {
        const auto [rows, cols] = std::array<std::array<int64_t, 2>, 7>{
            {{64, 64}, {32, 64}, {32, 64}, {64, 64}, {96, 64}, {96, 64}, {64, 96}}}[static_cast<std::size_t>(i)];
        static const char* names[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                       "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
        w.add_f32("model.layers." + std::to_string(l) + "." + names[i] + ".fisher", {rows, cols},
                  std::vector<float>(static_cast<std::size_t>(rows * cols), 1e-3f));
      }
  w.set_metadata("mpq_sensitivity_version", "1");
  w.set_metadata("traces", traces);
  const std::string p = dir + "/sens.safetensors";
  w.write(p);
  return p;
}

TEST(JsonTypes, SensitivityTracesOfTheWrongTypeAreInputErrors) {
  const std::string dir = test::scratch_dir("rel-sens");
  test::write_tiny_llama(dir + "/model", test::TinyLlamaSpec{});
  const std::string search = tool("mpq-search") + " -q --model " + dir + "/model --target-bpw 6 --out " + dir + "/plan.json";
  for (const auto& [traces, field] : std::vector<std::pair<std::string, std::string>>{
           {"[1, 2]", "__metadata__.traces"},
           {"{\"model.layers.0.self_attn.q_proj\": [1]}", "__metadata__.traces.model.layers.0.self_attn.q_proj"},
           {"{\"model.layers.0.self_attn.q_proj\": {\"hutchinson_trace\": \"big\"}}", "hutchinson_trace"},
           {"not json", "__metadata__.traces"}}) {
    const std::string sens = write_sensitivity(dir, traces);
    expect_error_line(run(search + " --sensitivity " + sens), 3, {sens, field});
  }
}

TEST(JsonTypes, HawqWithoutHutchinsonTracesIsInputError) {
  // Files written without --kind hutchinson record hutchinson_trace 0 and hutchinson_samples
  // 0; --cost hawq used to take the 0 as a trace (every Omega 0, a meaningless plan, exit 0).
  const std::string dir = test::scratch_dir("rel-hawq");
  test::write_tiny_llama(dir + "/model", test::TinyLlamaSpec{});
  nlohmann::json traces = nlohmann::json::object();
  for (int l = 0; l < 2; ++l)
    for (const char* p : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      traces["model.layers." + std::to_string(l) + "." + p] = {{"hutchinson_trace", 0.0}, {"hutchinson_samples", 0}};
  const std::string sens = write_sensitivity(dir, traces.dump());
  const std::string search = tool("mpq-search") + " -q --model " + dir + "/model --sensitivity " + sens +
                             " --formats nvfp4,fp8 --target-bpw 6 --out " + dir + "/plan.json";
  expect_error_line(run(search + " --cost hawq"), 3, {"Hutchinson", "model.layers.0.self_attn.q_proj"});
  EXPECT_EQ(run(search + " --cost fisher").rc, 0);
}

TEST(JsonTypes, LatencyTableFieldsOfTheWrongType) {
  const std::string dir = test::scratch_dir("rel-lat");
  const std::string p = dir + "/lat.json";
  test::write_text(p, R"({"entries": [{"rows": "64", "cols": 64, "candidate": "fp8", "us": 1}]})");
  expect_throws([&] { read_latency_table(p); }, ExitCode::kInput, {p, "entries[0].rows"});
  test::write_text(p, R"({"device": 5, "entries": []})");
  expect_throws([&] { read_latency_table(p); }, ExitCode::kInput, {p, "device"});
  test::write_text(p, R"({"entries": {}})");
  expect_throws([&] { read_latency_table(p); }, ExitCode::kInput, {p, "entries"});
}

TEST(JsonTypes, TokenizerConfigAddBosNotABoolean) {
  MPQ_REQUIRE_DATA();
  const std::string dir = test::scratch_dir("rel-tok");
  fs::copy_file(test::data_dir() + "/models/stories260K-hf/tokenizer.model", dir + "/tokenizer.model");
  test::write_text(dir + "/tokenizer_config.json", R"({"add_bos_token": "yes"})");
  expect_throws([&] { Tokenizer::load(dir); }, ExitCode::kInput, {"tokenizer_config.json", "add_bos_token"});
  test::write_text(dir + "/tokenizer_config.json", R"({"add_bos_token": false})");
  EXPECT_FALSE(Tokenizer::load(dir).add_bos());
  test::write_text(dir + "/tokenizer_config.json", "[]");
  expect_throws([&] { Tokenizer::load(dir); }, ExitCode::kInput, {"tokenizer_config.json", "not a JSON object"});
}

TEST(JsonTypes, JsonObjectAccessors) {
  const nlohmann::json j = {{"s", "x"}, {"i", 3}, {"d", 1.5}, {"b", true}, {"n", nullptr}, {"o", {{"k", 1}}},
                            {"big", 18446744073709551615ull}};
  const JsonObject o(j, "f.json");
  EXPECT_EQ(o.get_string("s"), "x");
  EXPECT_EQ(o.get_int("i"), 3);
  EXPECT_EQ(o.get_double("i"), 3.0);
  EXPECT_EQ(o.get_int("n", 7), 7);  // null = absent for optional fields
  EXPECT_EQ(o.get_object("o").get_int("k"), 1);
  expect_throws([&] { o.get_int("d"); }, ExitCode::kInput, {"f.json: d: expected an integer, got number"});
  expect_throws([&] { o.get_string("n"); }, ExitCode::kInput, {"f.json: n: null"});
  expect_throws([&] { o.get_bool("missing"); }, ExitCode::kInput, {"f.json: missing: missing"});
  expect_throws([&] { o.get_object("o").get_string("k"); }, ExitCode::kInput, {"f.json: o.k: expected a string"});
  expect_throws([&] { o.get_int("big"); }, ExitCode::kInput, {"big", "64 bits"});
  expect_throws([&] { JsonObject(j["s"], "f.json", "s"); }, ExitCode::kInput, {"f.json: s: not a JSON object"});
}

// --- Hostile config dimensions --------------------------------------------------------

TEST(ConfigDims, HugeLayerCountFailsBeforeAllocating) {
  const std::string m = tiny_model("rel-layers");
  const std::string ids = tiny_tokens(m);
  const std::string out = test::scratch_dir("rel-layers-out") + "/packed";
  for (const int64_t layers : {int64_t{1000000}, int64_t{1} << 40, int64_t{1} << 62}) {
    edit_config(m, [&](nlohmann::json& j) { j["num_hidden_layers"] = layers; });
    for (const std::string& cmd :
         {tool("mpq-inspect") + " " + m, tool("mpq-eval") + " --model " + m + " --tokens " + ids + " --ctx 32 -q",
          tool("mpq-pack") + " --model " + m + " --format nvfp4 --out " + out + " -q",
          tool("mpq-sensitivity") + " --model " + m + " --calib " + ids + " --samples 2 --seq-len 16 --out " + out +
              ".safetensors -q"}) {
      const ToolRun r = run(cmd);
      // 2^62 layers overflow the parameter count; the others disagree with the tensors.
      expect_error_line(r, 3, {"config.json", "num_hidden_layers"});
    }
    EXPECT_FALSE(fs::exists(out));
  }
  edit_config(m, [&](nlohmann::json& j) { j["num_hidden_layers"] = 1; });  // fewer than present: also refused
  expect_error_line(run(tool("mpq-inspect") + " " + m), 3, {"num_hidden_layers", "2 layer(s)"});
}

TEST(ConfigDims, HeadDimOverflowAndMismatch) {
  const std::string m = tiny_model("rel-headdim");
  edit_config(m, [](nlohmann::json& j) { j["head_dim"] = int64_t{1} << 62; });  // 8 * 2^62 overflows
  expect_error_line(run(tool("mpq-inspect") + " " + m), 3, {"config.json", "num_attention_heads * head_dim", "overflows"});
  edit_config(m, [](nlohmann::json& j) { j["head_dim"] = int64_t{1} << 40; });  // no overflow, wrong
  expect_error_line(run(tool("mpq-inspect") + " " + m), 3, {"config.json", "head_dim", "q_proj"});
  edit_config(m, [](nlohmann::json& j) {
    j["head_dim"] = 8;
    j["vocab_size"] = int64_t{1} << 50;
  });
  expect_error_line(run(tool("mpq-inspect") + " " + m), 3, {"config.json", "vocab_size", "embed_tokens"});
  edit_config(m, [](nlohmann::json& j) {
    j["vocab_size"] = 128;
    j["intermediate_size"] = int64_t{1} << 61;  // hidden * intermediate * 3 overflows
  });
  expect_error_line(run(tool("mpq-inspect") + " " + m), 3, {"config.json", "intermediate_size", "overflows"});
}

// --- Output staging -------------------------------------------------------------------

std::vector<bool> g_target_seen;  // after each rename: did "<target>/marker" exist?
std::string g_target;
int g_plain_failures_left = 0;    // plain renames (flags 0) to fail with EIO, after the first

int observing_rename(const char* from, const char* to, unsigned flags) {
  const int rc = ::renameat2(AT_FDCWD, from, AT_FDCWD, to, flags);
  g_target_seen.push_back(fs::exists(g_target + "/marker"));
  return rc;
}

int no_exchange_rename(const char* from, const char* to, unsigned flags) {
  if (flags & RENAME_EXCHANGE) {
    errno = EINVAL;  // as on a file system without RENAME_EXCHANGE
    return -1;
  }
  return observing_rename(from, to, flags);
}

int failing_rename(const char* from, const char* to, unsigned flags) {
  if (flags & RENAME_EXCHANGE) {
    errno = EINVAL;
    return -1;
  }
  if (flags == 0 && !g_target_seen.empty() && g_plain_failures_left > 0) {
    --g_plain_failures_left;
    g_target_seen.push_back(false);
    errno = EIO;
    return -1;
  }
  return observing_rename(from, to, flags);
}

struct RenameHook {
  explicit RenameHook(OutputDir::RenameFn fn) { OutputDir::set_rename_for_testing(fn); }
  ~RenameHook() { OutputDir::set_rename_for_testing(nullptr); }
};

std::string make_old_output(const std::string& tag) {
  const std::string target = test::scratch_dir(tag) + "/out";
  fs::create_directory(target);
  test::write_text(target + "/marker", "old");
  g_target = target;
  g_target_seen.clear();
  return target;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(OutputStaging, ForceReplacesInOneAtomicExchange) {
  const std::string target = make_old_output("rel-exchange");
  RenameHook hook(observing_rename);
  {
    OutputDir d(target, /*force=*/true);
    test::write_text(d.staging() + "/marker", "new");
    d.publish();
    EXPECT_FALSE(fs::exists(d.staging()));  // the old output, swapped there, is removed
  }
  EXPECT_EQ(slurp(target + "/marker"), "new");
  ASSERT_EQ(g_target_seen.size(), 1u);  // one rename call, after which the target is complete
  EXPECT_TRUE(g_target_seen[0]);
  EXPECT_EQ(std::distance(fs::directory_iterator(fs::path(target).parent_path()), {}), 1);
}

TEST(OutputStaging, FallbackWithoutExchangeHasTheTwoRenameWindow) {
  const std::string target = make_old_output("rel-fallback");
  RenameHook hook(no_exchange_rename);
  {
    OutputDir d(target, true);
    test::write_text(d.staging() + "/marker", "new");
    d.publish();
  }
  EXPECT_EQ(slurp(target + "/marker"), "new");
  ASSERT_EQ(g_target_seen.size(), 2u);  // aside, then into place: missing in between
  EXPECT_FALSE(g_target_seen[0]);
  EXPECT_TRUE(g_target_seen[1]);
  EXPECT_EQ(std::distance(fs::directory_iterator(fs::path(target).parent_path()), {}), 1);  // no .old left
}

TEST(OutputStaging, FailedRenameIsRolledBackAndFailedRollbackIsExitFour) {
  const std::string target = make_old_output("rel-rollback");
  {
    RenameHook hook(failing_rename);
    g_plain_failures_left = 1;  // the rename into place fails, the rollback works
    OutputDir d(target, true);
    test::write_text(d.staging() + "/marker", "new");
    expect_throws([&] { d.publish(); }, ExitCode::kOutput, {target, "cannot rename the staged folder into place"});
  }
  EXPECT_EQ(slurp(target + "/marker"), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(fs::path(target).parent_path()), {}), 1);  // staging removed

  g_target_seen.clear();
  const std::string old = target + ".old-" + std::to_string(::getpid());
  {
    RenameHook hook(failing_rename);
    g_plain_failures_left = 2;  // the rename into place and the rollback fail
    OutputDir d(target, true);
    test::write_text(d.staging() + "/marker", "new");
    expect_throws([&] { d.publish(); }, ExitCode::kOutput, {"nor put the previous output back", old});
  }
  EXPECT_FALSE(fs::exists(target));
  EXPECT_EQ(slurp(old + "/marker"), "old");  // nothing lost: the message says where it is
}

TEST(OutputStaging, KilledFallbackIsRestoredByTheNextRun) {
  const std::string parent = test::scratch_dir("rel-restore");
  const std::string target = parent + "/out", old = target + ".old-" + std::to_string(dead_pid());
  fs::create_directory(old);
  test::write_text(old + "/marker", "old");
  // No --force: the restored folder is not empty, so this run stops; nothing was lost.
  expect_throws([&] { OutputDir d(target, false); }, ExitCode::kOutput, {"exists and is not empty"});
  EXPECT_EQ(slurp(target + "/marker"), "old");
  EXPECT_FALSE(fs::exists(old));
}

TEST(OutputStaging, StalePartialFoldersOfDeadRunsAreRemoved) {
  const std::string m = tiny_model("rel-stale");
  const std::string parent = test::scratch_dir("rel-stale-out");
  const std::string out = parent + "/packed";
  const std::string dead = out + ".partial-" + std::to_string(dead_pid());
  const std::string live = out + ".partial-" + std::to_string(::getpid());  // this test process: alive
  const std::string other = out + ".partial-x1";                            // not ours: kept
  for (const std::string& d : {dead, live, other}) {
    fs::create_directory(d);
    test::write_text(d + "/model.safetensors", "stale");
  }
  const ToolRun r = run(tool("mpq-pack") + " --model " + m + " --format fp8 --out " + out + " -q");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(other));
  EXPECT_TRUE(fs::exists(out + "/config.json"));

  // Files: a stale "<file>.tmp.<dead pid>" beside a JSON output is removed too.
  const std::string js = parent + "/eval.json", stale_tmp = js + ".tmp." + std::to_string(dead_pid());
  test::write_text(stale_tmp, "{");
  ASSERT_EQ(run(tool("mpq-eval") + " --model " + out + " --tokens " + tiny_tokens(parent) + " --ctx 32 -q --json " + js).rc, 0);
  EXPECT_FALSE(fs::exists(stale_tmp));
  EXPECT_TRUE(fs::exists(js));
}

TEST(OutputStaging, TrailingSlashAndExistingRegularFile) {
  const std::string m = tiny_model("rel-edge");
  const std::string parent = test::scratch_dir("rel-edge-out");
  const std::string pack = tool("mpq-pack") + " --model " + m + " --format fp8 -q --out ";
  ToolRun r = run(pack + parent + "/slash/");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(fs::exists(parent + "/slash/config.json"));
  EXPECT_EQ(std::distance(fs::directory_iterator(parent), {}), 1);  // no ".partial-<pid>" left inside or beside

  const std::string file = parent + "/file";
  test::write_text(file, "");  // an empty regular file
  r = run(pack + file);
  expect_error_line(r, 4, {file, "not a folder", "--force"});
  EXPECT_TRUE(fs::is_regular_file(file));
  r = run(pack + file + " --force");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(fs::exists(file + "/config.json"));

  // File outputs: a trailing slash or a folder at the path is exit 4 naming it.
  expect_error_line(run(tool("mpq-inspect") + " " + m + " --json " + parent + "/x.json/"), 4, {"x.json/", "file name"});
  expect_error_line(run(tool("mpq-inspect") + " " + m + " --json " + parent + "/slash"), 4, {"slash", "is a folder"});
}

TEST(OutputStaging, FileRenameFailureRemovesTheTemporary) {
  const std::string dir = test::scratch_dir("rel-file");
  const std::string p = dir + "/dest";
  OutputFile f(p);
  f.write("abc", 3);
  ASSERT_EQ(::mkdir(p.c_str(), 0755), 0);  // a folder appears at the target meanwhile
  test::write_text(p + "/inside", "x");
  expect_throws([&] { f.commit(); }, ExitCode::kOutput, {p, "rename"});
  EXPECT_FALSE(fs::exists(p + ".tmp." + std::to_string(::getpid())));
}

TEST(OutputStaging, ProcessAlive) {
  EXPECT_TRUE(process_alive(::getpid()));
  EXPECT_FALSE(process_alive(dead_pid()));
  EXPECT_FALSE(process_alive(0));
  EXPECT_FALSE(process_alive(-5));
}

// --- Plans naming non-linear tensors ----------------------------------------------------

TEST(PlanModules, NonLinearTensorIsRefused) {
  const std::string m = tiny_model("rel-embed");
  const std::string dir = test::scratch_dir("rel-embed-out");
  const std::string plan = dir + "/plan.json", out = dir + "/packed";
  for (const char* module : {"model.embed_tokens", "lm_head", "model.norm", "model.layers.0.input_layernorm",
                                    "model.layers.2.self_attn.q_proj", "model.layers.00.self_attn.q_proj"}) {
    nlohmann::json j = fp8_plan();
    j["tensors"][module] = {{"candidate", "fp8"}};  // every linear is there too
    test::write_text(plan, j.dump());
    const ToolRun r = run(tool("mpq-pack") + " --model " + m + " --plan " + plan + " --out " + out + " -q");
    expect_error_line(r, 3, {plan, "'" + std::string(module) + "'", "is not a linear module"});
    EXPECT_FALSE(fs::exists(out));
  }
}

// --- Context beyond max_position_embeddings ---------------------------------------------

TEST(EvalCtx, BeyondMaxPositionEmbeddingsNeedsAllowFlag) {
  const std::string m = tiny_model("rel-ctx");  // max_position_embeddings 256
  const std::string ids = tiny_tokens(m, 700), js = m + "/eval.json";
  const std::string eval = tool("mpq-eval") + " --model " + m + " --tokens " + ids + " -q --json " + js;
  ToolRun r = run(eval + " --ctx 300");
  expect_error_line(r, 2, {"--ctx 300", "max_position_embeddings 256", "--allow-long-ctx"});
  EXPECT_FALSE(fs::exists(js));
  r = run(eval + " --ctx 300 --allow-long-ctx");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("warning: --ctx 300 exceeds max_position_embeddings 256"), std::string::npos) << r.out;
  nlohmann::json j = read_json(js);
  EXPECT_EQ(j["ctx_beyond_max_position_embeddings"], true);
  EXPECT_EQ(j["max_position_embeddings"], 256);
  r = run(eval + " --ctx 256");
  ASSERT_EQ(r.rc, 0) << r.out;
  j = read_json(js);
  EXPECT_EQ(j["ctx_beyond_max_position_embeddings"], false);
  r = run(eval);  // no --ctx: min(512, max_position_embeddings)
  ASSERT_EQ(r.rc, 0) << r.out;
  j = read_json(js);
  EXPECT_EQ(j["ctx"], 256);
  EXPECT_EQ(j["ctx_beyond_max_position_embeddings"], false);
}

}  // namespace
}  // namespace mpq

namespace mpq {
namespace {

// --- Calibration windows (found by fuzz_tokens: --samples 150000000 allocated 1.2 GB) ----

TEST(CalibrationWindows, HugeSampleCountsAreInputErrorsBeforeAllocating) {
  expect_throws([] { calibration_window_starts(1000, int64_t{1} << 40, 16, 0, false); }, ExitCode::kInput,
                {"985 distinct windows", "--samples 1099511627776"});
  expect_throws([] { calibration_window_starts(1000, int64_t{1} << 62, 4, 0, true); }, ExitCode::kInput,
                {"sequential windows"});  // N * L overflowed int64 before
  EXPECT_EQ(calibration_window_starts(1000, 985, 16, 0, false).size(), 985u);
  const std::string m = tiny_model("rel-samples");
  const ToolRun r = run(tool("mpq-sensitivity") + " --model " + m + " --calib " + tiny_tokens(m) +
                        " --samples 2000000000 --seq-len 16 --out " + m + "/s.safetensors -q");
  expect_error_line(r, 3, {"--samples 2000000000"});
}

}  // namespace
}  // namespace mpq
