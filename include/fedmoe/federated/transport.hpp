#pragma once
/// @file transport.hpp
/// @brief The Transport concept: the only channel between clients and the server.
///
/// Downlink: `broadcast(global)` makes the global parameters available to clients
/// (`global()` reads them). Uplink: `upload(update)` carries a ClientUpdate to the server,
/// and `collect()` hands the server everything uploaded since the last collect, sorted by
/// client id. The server object has no reference to any client; clients have none to the
/// server: everything the server learns passes through here, which is what makes
/// "opt-out clients send nothing" and "specialist and gate never leave the client"
/// checkable (see InProcessTransport's observer, used by the tests).
#include <algorithm>
#include <concepts>
#include <functional>
#include <mutex>
#include <vector>

#include "aggregator.hpp"

namespace fedmoe {

/// A participating client's validation loss of the current global model (for early stopping).
struct ValidationReport {
  std::int64_t client = -1;
  double loss_sum = 0;  ///< sum of per-sample cross-entropies
  Index samples = 0;
};

template <class T, class Scalar = float>
concept Transport = requires(T t, const Vector<Scalar>& global, ClientUpdate<Scalar> update, ValidationReport r) {
  t.broadcast(global);
  { t.global() } -> std::convertible_to<const Vector<Scalar>&>;
  t.upload(std::move(update));
  { t.collect() } -> std::same_as<std::vector<ClientUpdate<Scalar>>>;
  t.report(r);
  { t.collect_reports() } -> std::same_as<std::vector<ValidationReport>>;
};

/// In-process transport: updates are moved, never copied. Thread-safe uploads.
/// An optional observer sees every upload (for instrumentation and tests).
template <class Scalar = float>
class InProcessTransport {
public:
  using Observer = std::function<void(const ClientUpdate<Scalar>&)>;
  using ReportObserver = std::function<void(const ValidationReport&)>;

  explicit InProcessTransport(Observer observer = {}, ReportObserver report_observer = {})
      : m_observer(std::move(observer)), m_report_observer(std::move(report_observer)) {}

  void broadcast(const Vector<Scalar>& global) { m_global = global; }
  const Vector<Scalar>& global() const { return m_global; }

  void upload(ClientUpdate<Scalar> update) {
    std::lock_guard lock(m_mutex);
    if (m_observer) m_observer(update);
    m_inbox.push_back(std::move(update));
  }

  std::vector<ClientUpdate<Scalar>> collect() {
    std::lock_guard lock(m_mutex);
    std::vector<ClientUpdate<Scalar>> out = std::move(m_inbox);
    m_inbox.clear();
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.client < b.client; });
    return out;
  }

  void report(const ValidationReport& r) {
    std::lock_guard lock(m_mutex);
    if (m_report_observer) m_report_observer(r);
    m_reports.push_back(r);
  }

  std::vector<ValidationReport> collect_reports() {
    std::lock_guard lock(m_mutex);
    std::vector<ValidationReport> out = std::move(m_reports);
    m_reports.clear();
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.client < b.client; });
    return out;
  }

private:
  Observer m_observer;
  ReportObserver m_report_observer;
  std::vector<ValidationReport> m_reports;
  Vector<Scalar> m_global;
  std::vector<ClientUpdate<Scalar>> m_inbox;
  std::mutex m_mutex;
};

}  // namespace fedmoe
