#pragma once
/// @file transport.hpp
/// @brief The Transport concept: the only channel between clients and the server.
///
/// Downlink: `broadcast(global, extras)` makes the global parameters and the client algorithm's
/// extra vectors (SCAFFOLD's control variate; none for FedAvg) available to clients (`global()`,
/// `extras()` read them). Uplink: `upload(update)` carries a ClientUpdate to the server,
/// and `collect()` hands the server everything uploaded since the last collect, sorted by
/// client id. The server object has no reference to any client; clients have none to the
/// server: everything the server learns passes through here, which is what makes
/// "opt-out clients send nothing" and "specialist and gate never leave the client"
/// checkable (see InProcessTransport's observer, used by the tests).
///
/// Roles (optional members, for transports that span processes, e.g. MpiTransport in
/// fedmoe/distributed/mpi.hpp). Every process runs the same federation loop; a transport may say
///  - `bool is_server() const`: this process plays the server (aggregates, decides);
///  - `bool owns(std::int64_t client) const`: this process hosts that client (trains it);
///  - `double share(double v)`: every process returns the server's `v` (a collective);
/// and then `broadcast`, `collect` and `collect_reports` are collectives that every process
/// calls in the same order. A transport without these members is a single process that is
/// server and hosts every client (`transport_is_server`, `transport_owns`, `transport_share`
/// below supply those defaults), so the in-process path runs exactly as before.
///
/// Protocol messages (optional members, the MessageTransport concept; what multi-step protocols such as
/// secure aggregation exchange, as opaque bytes the protocol itself authenticates):
///  - `post(message)`: a hosted client queues a message to the server (thread-safe);
///  - `collect_posts()`: collective; the server process receives every message posted since the last
///    call, sorted by client id (stable: a client's messages in posting order); others get none;
///  - `deliver(messages)`: collective; the server's messages, each addressed to `message.client`, reach
///    the process hosting that client, which receives those (sorted by client id, stably); the server's
///    argument is ignored on the other processes.
#include <algorithm>
#include <concepts>
#include <cstdint>
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

/// An opaque protocol message between one client and the server (see "Protocol messages").
struct ClientMessage {
  std::int64_t client = -1;  ///< the sender (uplink) or the recipient (downlink)
  std::vector<std::uint8_t> bytes;
};

template <class T>
concept MessageTransport = requires(T t, ClientMessage m, std::vector<ClientMessage> ms) {
  t.post(std::move(m));
  { t.collect_posts() } -> std::same_as<std::vector<ClientMessage>>;
  { t.deliver(std::move(ms)) } -> std::same_as<std::vector<ClientMessage>>;
};

namespace detail {
inline void sort_messages(std::vector<ClientMessage>& ms) {
  std::stable_sort(ms.begin(), ms.end(), [](const auto& a, const auto& b) { return a.client < b.client; });
}
}  // namespace detail

template <class T, class Scalar = float>
concept Transport = requires(T t, const Vector<Scalar>& global, const std::vector<Vector<Scalar>>& extras,
                             ClientUpdate<Scalar> update, ValidationReport r) {
  t.broadcast(global, extras);
  { t.global() } -> std::convertible_to<const Vector<Scalar>&>;
  { t.extras() } -> std::convertible_to<const std::vector<Vector<Scalar>>&>;
  t.upload(std::move(update));
  { t.collect() } -> std::same_as<std::vector<ClientUpdate<Scalar>>>;
  t.report(r);
  { t.collect_reports() } -> std::same_as<std::vector<ValidationReport>>;
};

/// True if this process plays the server (default: true).
template <class T>
bool transport_is_server(const T& t) {
  if constexpr (requires { { t.is_server() } -> std::convertible_to<bool>; }) return t.is_server();
  else return true;
}

/// True if this process hosts `client` (default: true, every client is local).
template <class T>
bool transport_owns(const T& t, std::int64_t client) {
  if constexpr (requires { { t.owns(client) } -> std::convertible_to<bool>; }) return t.owns(client);
  else return true;
}

/// The server's `value` on every process (default: `value`, there is only one process).
template <class T>
double transport_share(T& t, double value) {
  if constexpr (requires { { t.share(value) } -> std::convertible_to<double>; }) return t.share(value);
  else return value;
}

/// In-process transport: updates are moved, never copied. Thread-safe uploads.
/// An optional observer sees every upload (for instrumentation and tests).
template <class Scalar = float>
class InProcessTransport {
public:
  using Observer = std::function<void(const ClientUpdate<Scalar>&)>;
  using ReportObserver = std::function<void(const ValidationReport&)>;

  explicit InProcessTransport(Observer observer = {}, ReportObserver report_observer = {})
      : m_observer(std::move(observer)), m_report_observer(std::move(report_observer)) {}

  void broadcast(const Vector<Scalar>& global, const std::vector<Vector<Scalar>>& extras = {}) {
    m_global = global;
    m_extras = extras;
  }
  const Vector<Scalar>& global() const { return m_global; }
  const std::vector<Vector<Scalar>>& extras() const { return m_extras; }

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

  void post(ClientMessage m) {
    std::lock_guard lock(m_mutex);
    m_posts.push_back(std::move(m));
  }
  std::vector<ClientMessage> collect_posts() {
    std::lock_guard lock(m_mutex);
    std::vector<ClientMessage> out = std::move(m_posts);
    m_posts.clear();
    detail::sort_messages(out);
    return out;
  }
  /// One process hosts every client: the messages come straight back, sorted by recipient.
  std::vector<ClientMessage> deliver(std::vector<ClientMessage> messages) {
    detail::sort_messages(messages);
    return messages;
  }

private:
  std::vector<ClientMessage> m_posts;
  Observer m_observer;
  ReportObserver m_report_observer;
  std::vector<ValidationReport> m_reports;
  Vector<Scalar> m_global;
  std::vector<Vector<Scalar>> m_extras;
  std::vector<ClientUpdate<Scalar>> m_inbox;
  std::mutex m_mutex;
};

}  // namespace fedmoe
