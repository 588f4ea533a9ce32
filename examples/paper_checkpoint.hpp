#pragma once
// fedmoe-paper --checkpoint DIR / --resume DIR: exact resume of a sweep (fedmoe/io/archive.hpp).
//
// DIR holds
// - `setting-<i>.state`: setting i, complete (its federation's result, every client's results);
//   written once, when the setting ends;
// - `sweep.state`: what identifies the run (fedmoe's version and commit, every result-bearing flag),
//   how many settings are complete, and the setting in progress: its main federation's latest state
//   (train_federated's FederationCheckpoint: global model, optimizer and aggregator state, client
//   states, early stopping's best copy, history) or, once that federation ended, its result and
//   model; each client's personalisation results as they complete; each personalised-FL baseline's
//   federation state, then its results.
// Every file is written durably (temporary file, fsync, rename, fsync of the directory), so a
// `kill -9` at any moment leaves the previous or the new file. `--resume DIR` continues from there
// and ends with outputs whose results are bitwise those of an uninterrupted run (for any --threads).
// A checkpoint whose identity differs from this run's is refused before any work, naming what
// differs. A complete sweep's checkpoint stays: --resume rewrites the outputs without training.
//
// Test hook: FEDMOE_PAPER_CRASH_AT=N:half|synced|renamed kills the process (SIGKILL) at the N-th file
// save, after half of the bytes were written, after the temporary file was synced, or after the
// rename. While it is set every save point saves (no throttling), so the N-th save is the same in
// every run.
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <fedmoe/federated/client_result.hpp>
#include <fedmoe/federated/federation.hpp>
#include <fedmoe/io/archive.hpp>
#include <nlohmann/json.hpp>

#ifndef FEDMOE_PAPER_VERSION
#define FEDMOE_PAPER_VERSION "unknown"
#endif

namespace fedmoe_paper {

/// The setting in progress, as far as it got.
struct SettingProgress {
  std::uint64_t index = 0;                   ///< position in the sweep
  double seconds = 0;                        ///< spent on it by earlier processes
  std::string federation;                    ///< the main federation's latest state ("": none yet)
  std::optional<fedmoe::FederationResult> fed;  ///< set once the main federation ended
  fedmoe::Vector<float> global;              ///< its model (with `fed`)
  std::vector<fedmoe::ClientResult> clients; ///< every client's results so far
  std::vector<bool> personalised;            ///< which clients' personalisation is complete
  std::vector<std::string> baselines_done;   ///< baselines whose results are in `clients`
  std::string baseline, baseline_state;      ///< the baseline federation in progress and its state

  template <class Ar>
  void serialize(Ar& ar) {
    ar("index", index)("seconds", seconds)("federation", federation)("fed", fed)("global", global);
    ar("clients", clients)("personalised", personalised)("baselines_done", baselines_done);
    ar("baseline", baseline)("baseline_state", baseline_state);
  }
};

/// Where every result-bearing input of the run is named: `flags` (every flag that can change a result,
/// by name), fedmoe's version and the commit the build was configured from.
inline nlohmann::json checkpoint_identity(nlohmann::json flags) {
  return nlohmann::json{{"format", "fedmoe-paper sweep state 1"},
                        {"fedmoe", FEDMOE_PAPER_VERSION},
                        {"serialization_version", fedmoe::serialization_version},
                        {"flags", std::move(flags)}};
}

/// What differs between two identities, e.g. "--rounds: the checkpoint has 10, this run has 20".
inline std::string identity_difference(const nlohmann::json& saved, const nlohmann::json& now) {
  std::string out;
  const auto add = [&](const std::string& key, const nlohmann::json* a, const nlohmann::json* b) {
    out += (out.empty() ? "" : "; ") + key + ": the checkpoint has " + (a ? a->dump() : "nothing") +
           ", this run has " + (b ? b->dump() : "nothing");
  };
  for (const char* top : {"format", "fedmoe", "serialization_version"})
    if (saved.value(top, nlohmann::json()) != now.value(top, nlohmann::json()))
      add(top, saved.contains(top) ? &saved[top] : nullptr, now.contains(top) ? &now[top] : nullptr);
  const nlohmann::json empty = nlohmann::json::object();
  const nlohmann::json& a = saved.contains("flags") ? saved["flags"] : empty;
  const nlohmann::json& b = now.contains("flags") ? now["flags"] : empty;
  for (const auto& [key, value] : a.items())
    if (!b.contains(key) || b[key] != value) add(key, &value, b.contains(key) ? &b[key] : nullptr);
  for (const auto& [key, value] : b.items())
    if (!a.contains(key)) add(key, nullptr, &value);
  return out;
}

/// A sweep's checkpoint directory (see the file comment). Thread-safe: personalisation saves from
/// its workers.
class SweepCheckpoint {
public:
  static constexpr const char* sweep_file = "sweep.state";

  /// --checkpoint DIR (resume = false): DIR is created if needed and must not hold a checkpoint yet.
  /// --resume DIR: DIR's checkpoint is read and checked against this run. All before any work.
  SweepCheckpoint(std::string dir, bool resume, const nlohmann::json& flags, fedmoe::Index clients)
      : m_dir(std::move(dir)), m_identity(checkpoint_identity(flags).dump()), m_clients(clients) {
    namespace fs = std::filesystem;
    if (const char* crash = std::getenv("FEDMOE_PAPER_CRASH_AT")) parse_crash(crash);
    const std::string path = file(sweep_file);
    if (resume) {
      FEDMOE_CHECK(fs::exists(path), "fedmoe-paper: --resume ", m_dir, ": no checkpoint there (expected the file '",
                   path, "', written by --checkpoint ", m_dir, ")");
      load(path);
    } else {
      std::error_code ec;
      fs::create_directories(m_dir, ec);
      FEDMOE_CHECK(!ec && fs::is_directory(m_dir), "fedmoe-paper: --checkpoint ", m_dir,
                   ": cannot create the directory: ", ec ? ec.message() : "a file of that name exists");
      FEDMOE_CHECK(!fs::exists(path), "fedmoe-paper: --checkpoint ", m_dir, " already holds a checkpoint ('", path,
                   "'): continue it with --resume ", m_dir, ", or remove it to start afresh");
      save_now();  // the directory is writable: known now, not after the first setting
    }
  }

  std::size_t settings_done() const { return m_done; }

  /// Setting i (< settings_done()), as saved when it ended.
  template <class Setting>
  Setting load_setting(std::size_t i, double p, double opt_out) const {
    const std::string path = file("setting-" + std::to_string(i) + ".state");
    fedmoe::StateReader r(fedmoe::read_state_file(path), "fedmoe-paper: --resume: '" + path + "'");
    std::string identity;
    Setting s{};
    r("identity", identity)("setting", s);
    r.finish();
    FEDMOE_CHECK(identity == m_identity, r.who(), ": the file is from another run (",
                 identity_difference(nlohmann::json::parse(identity, nullptr, false), nlohmann::json::parse(m_identity)),
                 ")");
    FEDMOE_CHECK(s.p == p && s.opt_out == opt_out, r.who(), ": expected the setting p=", p, " opt-out=", opt_out,
                 ", the file has p=", s.p, " opt-out=", s.opt_out);
    FEDMOE_CHECK(s.clients.size() == std::size_t(m_clients), r.who(), ": expected the results of ", m_clients,
                 " clients, the file has ", s.clients.size());
    return s;
  }

  /// The setting in progress: the saved one when it is setting i, else a fresh one.
  SettingProgress& begin_setting(std::size_t i) {
    std::lock_guard lock(m_mutex);
    if (!m_current || m_current->index != i) {
      m_current = SettingProgress{};
      m_current->index = i;
    }
    auto& c = *m_current;
    FEDMOE_CHECK(c.clients.empty() || c.clients.size() == std::size_t(m_clients), "fedmoe-paper: --resume ", m_dir,
                 ": the setting in progress holds ", c.clients.size(), " clients' results, expected ", m_clients);
    c.clients.resize(std::size_t(m_clients));
    c.personalised.resize(std::size_t(m_clients), false);
    m_setting_start = Clock::now();
    return c;
  }

  /// The time spent on the setting in progress, by this process and the earlier ones.
  double setting_seconds() const {
    return m_current->seconds + std::chrono::duration<double>(Clock::now() - m_setting_start).count();
  }

  /// Applies `change` to the setting in progress and saves (now; or, with `throttled`, unless the last
  /// save was under two seconds ago: a client's personalisation is minutes of work at most).
  template <class F>
  void update(F&& change, bool throttled = false) {
    std::lock_guard lock(m_mutex);
    change(*m_current);
    if (throttled && !m_crash && Clock::now() - m_last_save < std::chrono::seconds(2)) return;
    save_now();
  }

  /// Setting i ended: its file, then the sweep file that counts it (a crash between the two redoes
  /// nothing but the bookkeeping).
  template <class Setting>
  void finish_setting(std::size_t i, const Setting& s) {
    std::lock_guard lock(m_mutex);
    fedmoe::StateWriter w;
    w("identity", m_identity)("setting", s);
    save_file(file("setting-" + std::to_string(i) + ".state"), w.bytes());
    m_done = i + 1;
    m_current.reset();
    save_now();
  }

private:
  using Clock = std::chrono::steady_clock;

  std::string file(const std::string& name) const { return (std::filesystem::path(m_dir) / name).string(); }

  void load(const std::string& path) {
    fedmoe::StateReader r(fedmoe::read_state_file(path), "fedmoe-paper: --resume: '" + path + "'");
    std::string identity;
    std::uint64_t done = 0;
    r("identity", identity);
    if (identity != m_identity) {
      const auto saved = nlohmann::json::parse(identity, nullptr, false);
      FEDMOE_FAIL("fedmoe-paper: --resume ", m_dir, ": the checkpoint is from another run (",
                  saved.is_discarded() ? std::string("its identity cannot be read")
                                       : identity_difference(saved, nlohmann::json::parse(m_identity)),
                  "); resume with the flags it was written with, or start afresh with --checkpoint in another "
                  "directory");
    }
    r("settings_done", done)("current", m_current);
    r.finish();
    m_done = std::size_t(done);
    FEDMOE_CHECK(!m_current || m_current->index == m_done, r.who(), ": inconsistent checkpoint: ", m_done,
                 " settings complete, but the one in progress is setting ", m_current ? m_current->index : 0);
  }

  void save_now() {
    if (m_current) {  // the time spent so far goes with it
      m_current->seconds = setting_seconds();
      m_setting_start = Clock::now();
    }
    fedmoe::StateWriter w;
    w("identity", m_identity)("settings_done", std::uint64_t(m_done))("current", m_current);
    save_file(file(sweep_file), w.bytes());
  }

  void save_file(const std::string& path, const std::string& bytes) {
    ++m_saves;
    std::function<void(fedmoe::SavePhase)> hook;
    if (m_crash && m_crash->first == m_saves)
      hook = [phase = m_crash->second](fedmoe::SavePhase p) {
        if (p == phase) std::raise(SIGKILL);
      };
    fedmoe::save_state_file(path, bytes, hook);
    m_last_save = Clock::now();
  }

  void parse_crash(const std::string& spec) {
    const auto colon = spec.find(':');
    const std::string n = spec.substr(0, colon), phase = colon == std::string::npos ? "" : spec.substr(colon + 1);
    char* end = nullptr;
    const unsigned long long count = std::strtoull(n.c_str(), &end, 10);
    FEDMOE_CHECK(!n.empty() && *end == '\0' && count > 0 && (phase == "half" || phase == "synced" || phase == "renamed"),
                 "fedmoe-paper: FEDMOE_PAPER_CRASH_AT: expected N:half|synced|renamed with N >= 1, got '", spec, "'");
    m_crash = {std::uint64_t(count), phase == "half"     ? fedmoe::SavePhase::half_written
                                      : phase == "synced" ? fedmoe::SavePhase::synced
                                                          : fedmoe::SavePhase::renamed};
  }

  std::string m_dir, m_identity;
  fedmoe::Index m_clients;
  std::size_t m_done = 0;
  std::optional<SettingProgress> m_current;
  std::mutex m_mutex;
  std::uint64_t m_saves = 0;
  std::optional<std::pair<std::uint64_t, fedmoe::SavePhase>> m_crash;
  Clock::time_point m_last_save = Clock::now();
  Clock::time_point m_setting_start = Clock::now();
};

}  // namespace fedmoe_paper
