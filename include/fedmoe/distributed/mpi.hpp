#pragma once
/// @file mpi.hpp
/// @brief MpiTransport: the federation across processes and machines with MPI.
///
/// Rank 0 is the server; client k lives on rank 1 + (k mod (N - 1)) of an N-process
/// communicator (N >= 2), so every client rank hosts several clients. Every rank runs the same
/// `train_federated` loop (federated/federation.hpp); this transport makes its calls collectives:
///
/// | call                | rank 0 (server)                              | client ranks                          |
/// |---------------------|----------------------------------------------|---------------------------------------|
/// | `broadcast(g, e)`   | sends `g` and extras (one `global` frame)    | receive them: `global()`, `extras()`  |
/// | `upload(u)`         | refused (hosts no client)                    | queued locally (thread-safe)          |
/// | `collect()`         | receives every rank's updates, sorted by id  | send a `count` frame, then the queue  |
/// | `report(r)`         | refused                                      | queued locally                        |
/// | `collect_reports()` | receives every rank's reports, sorted by id  | send a `count` frame, then the queue  |
/// | `share(v)`          | sends `v`                                    | receive and return rank 0's `v`       |
/// | `gather_results(r)` | receives the hosted clients' metrics         | send their ClientResult metrics       |
/// | `post(m)`           | refused (hosts no client)                    | queued locally (thread-safe)          |
/// | `collect_posts()`   | receives every rank's messages, by client id | send a `count` frame, then the queue  |
/// | `deliver(ms)`       | sends each rank the messages for its clients | receive theirs, sorted by client id   |
///
/// What crosses the wire is exactly what the federation needs: the global parameters (and the
/// client algorithm's extra vectors, e.g. SCAFFOLD's c) down; up, the participating clients'
/// updates (delta and extras) with their sample counts and the validation-loss
/// reports of the opted-in clients. Opted-out clients send nothing (Client refuses); specialist
/// and gate parameters never leave their rank (no call accepts them). After training,
/// `gather_results` sends each client's ClientResult to rank 0 (client_result.hpp's encoding, any
/// list of methods and metrics): evaluation METRICS only (accuracies, gate diagnostics, early-stopping
/// summaries), never model parameters.
///
/// Every message is a frame (distributed/framing.hpp) with a length and a CRC-32; a truncated,
/// corrupted, mismatched (wrong kind or element type, a broadcast of the wrong size) or misrouted
/// message (an update for a client the sending rank does not host) throws fedmoe::Error naming the
/// rank. An update of the wrong length is not a framing error: it reaches the server, which
/// rejects and reports it like any hostile update. The other ranks are then blocked in a collective: a program should report the error
/// and call MPI_Abort (MpiSession::abort), as fedmoe-paper-mpi does.
///
/// MPI is called from the thread that runs `train_federated` only (uploads from worker threads
/// are queued), so MPI_THREAD_FUNNELED suffices. The cluster is assumed homogeneous (byte order,
/// float format); the frame's magic and element size catch the obvious mismatches.
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "../federated/personalize.hpp"
#include "../federated/transport.hpp"
#include "framing.hpp"

namespace fedmoe {

/// RAII MPI_Init_thread(MPI_THREAD_FUNNELED) / MPI_Finalize.
class MpiSession {
public:
  MpiSession(int& argc, char**& argv) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    FEDMOE_CHECK(provided >= MPI_THREAD_FUNNELED, "MpiSession: expected MPI thread support FUNNELED (",
                 MPI_THREAD_FUNNELED, "), the MPI library provides ", provided);
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  static int rank(MPI_Comm comm = MPI_COMM_WORLD) {
    int r = 0;
    MPI_Comm_rank(comm, &r);
    return r;
  }
  static int size(MPI_Comm comm = MPI_COMM_WORLD) {
    int n = 0;
    MPI_Comm_size(comm, &n);
    return n;
  }
  /// Ends every process of `comm` (use after an error: the other ranks wait in a collective).
  [[noreturn]] static void abort(int code, MPI_Comm comm = MPI_COMM_WORLD) {
    MPI_Abort(comm, code);
    std::abort();
  }
};

template <class Scalar = float>
class MpiTransport {
public:
  static constexpr int tag_uplink = 7301;  ///< updates, reports, results, messages and their count frames
  static constexpr int tag_downlink = 7302;  ///< messages from rank 0 to the client ranks

  explicit MpiTransport(MPI_Comm comm = MPI_COMM_WORLD) : m_comm(comm) {
    MPI_Comm_rank(m_comm, &m_rank);
    MPI_Comm_size(m_comm, &m_size);
    FEDMOE_CHECK(m_size >= 2, "MpiTransport: expected at least 2 processes (rank 0 is the server, the others ",
                 "host the clients), got ", m_size, "; run with mpirun -np N, N >= 2");
  }
  MpiTransport(const MpiTransport&) = delete;
  MpiTransport& operator=(const MpiTransport&) = delete;

  int rank() const { return m_rank; }
  int size() const { return m_size; }
  bool is_server() const { return m_rank == 0; }
  /// The rank hosting `client`: 1 + (client mod (size - 1)).
  int owner(std::int64_t client) const { return 1 + int(client % std::int64_t(m_size - 1)); }
  bool owns(std::int64_t client) const { return client >= 0 && owner(client) == m_rank; }

  /// Collective. Rank 0 sends `global` followed by the algorithm's `extras` (one `global` frame of
  /// P (1 + E) values, aux = E); the other ranks check it against the size of their `global` (their
  /// replica) and keep both for `global()` and `extras()`.
  void broadcast(const Vector<Scalar>& global, const std::vector<Vector<Scalar>>& extras = {}) {
    const Index p = global.size();
    if (is_server()) {
      m_global = global;
      m_extras = extras;
      std::vector<Scalar> payload(global.data(), global.data() + p);
      for (const auto& e : extras) {
        FEDMOE_CHECK(e.size() == p, "MpiTransport::broadcast: an extra vector of ", e.size(), " values, expected ", p,
                     " (the global model's size)");
        payload.insert(payload.end(), e.data(), e.data() + p);
      }
      auto frame = encode_frame(FrameKind::global, -1, std::int64_t(extras.size()), std::span<const Scalar>(payload));
      bcast_bytes(&frame);
    } else {
      std::vector<std::byte> frame;
      bcast_bytes(&frame);
      const FrameView f = check_frame<Scalar>(frame, FrameKind::global, -1, "rank 0");
      const std::int64_t e = f.header.aux;
      FEDMOE_CHECK(e >= 0 && e < 1024 && f.header.count == std::int64_t(p) * (1 + e), "message from rank 0: a '",
                   "global' message of ", f.header.count, " elements with ", e, " extra vectors, expected ", p,
                   " x (1 + extras) elements (the replica has ", p, " parameters)");
      std::vector<Scalar> all(std::size_t(f.header.count));
      f.copy_to(std::span<Scalar>(all));
      m_global = Eigen::Map<const Vector<Scalar>>(all.data(), p);
      m_extras.resize(std::size_t(e));
      for (std::int64_t k = 0; k < e; ++k)
        m_extras[std::size_t(k)] = Eigen::Map<const Vector<Scalar>>(all.data() + (k + 1) * p, p);
    }
  }
  const Vector<Scalar>& global() const { return m_global; }
  const std::vector<Vector<Scalar>>& extras() const { return m_extras; }

  /// Queues the update as one `update` frame: delta then its extras (P (1 + E) values), aux = samples.
  void upload(ClientUpdate<Scalar> update) {
    FEDMOE_CHECK(owns(update.client), "MpiTransport::upload on rank ", m_rank, ": client ", update.client,
                 " lives on rank ", update.client >= 0 ? owner(update.client) : -1);
    std::vector<Scalar> payload(update.delta.data(), update.delta.data() + update.delta.size());
    for (const auto& e : update.extras) payload.insert(payload.end(), e.data(), e.data() + e.size());
    std::lock_guard lock(m_mutex);
    m_outbox.push_back(encode_frame(FrameKind::update, update.client, std::int64_t(update.num_samples),
                                    std::span<const Scalar>(payload)));
  }

  /// Collective. Rank 0 returns every update sent since the last collect, sorted by client id;
  /// the client ranks send theirs and return nothing.
  std::vector<ClientUpdate<Scalar>> collect() {
    std::vector<ClientUpdate<Scalar>> out;
    if (!is_server()) {
      send_outbox();
      return out;
    }
    // A payload of P (1 + E) values splits into the delta and E extras; any other length arrives as a
    // delta of that length, which the server then rejects as wrong-size (a hostile update is
    // dropped and reported, never fatal). Framing errors (corruption, truncation) still throw.
    const Index p = m_global.size();
    receive_all(FrameKind::update, -1, [&](const FrameView& f, int from) {
      check_routing(f, from);
      std::vector<Scalar> all(std::size_t(f.header.count));
      f.copy_to(std::span<Scalar>(all));
      const Index n = Index(all.size());
      const bool split = p > 0 && n >= p && n % p == 0;
      ClientUpdate<Scalar> u{f.header.client, Eigen::Map<const Vector<Scalar>>(all.data(), split ? p : n),
                             frame_index(f.header.aux, "sample count", "rank " + std::to_string(from)), {}};
      for (Index k = 1; split && k < n / p; ++k) u.extras.emplace_back(Eigen::Map<const Vector<Scalar>>(all.data() + k * p, p));
      out.push_back(std::move(u));
    });
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.client < b.client; });
    return out;
  }

  void report(const ValidationReport& r) {
    FEDMOE_CHECK(owns(r.client), "MpiTransport::report on rank ", m_rank, ": client ", r.client, " lives on rank ",
                 r.client >= 0 ? owner(r.client) : -1);
    std::lock_guard lock(m_mutex);
    m_outbox.push_back(encode_frame(FrameKind::report, r.client, std::int64_t(r.samples),
                                    std::span<const double>(&r.loss_sum, 1)));
  }

  /// Collective, like collect().
  std::vector<ValidationReport> collect_reports() {
    std::vector<ValidationReport> out;
    if (!is_server()) {
      send_outbox();
      return out;
    }
    receive_all(FrameKind::report, 1, [&](const FrameView& f, int from) {
      check_routing(f, from);
      FEDMOE_CHECK(f.header.aux >= 0, "message from rank ", from, ": a validation report of client ", f.header.client,
                   " over ", f.header.aux, " samples, expected >= 0");
      ValidationReport r{f.header.client, 0.0, frame_index(f.header.aux, "sample count", "rank " + std::to_string(from))};
      f.copy_to(std::span<double>(&r.loss_sum, 1));
      out.push_back(r);
    });
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.client < b.client; });
    return out;
  }

  /// Queues a protocol message of a hosted client for rank 0 (a `message` frame of bytes).
  void post(ClientMessage m) {
    FEDMOE_CHECK(owns(m.client), "MpiTransport::post on rank ", m_rank, ": client ", m.client, " lives on rank ",
                 m.client >= 0 ? owner(m.client) : -1);
    std::lock_guard lock(m_mutex);
    m_outbox.push_back(encode_frame(FrameKind::message, m.client, 0, std::span<const std::uint8_t>(m.bytes)));
  }

  /// Collective. Rank 0 returns every message posted since the last call, sorted by client id (stably);
  /// the client ranks send theirs and return nothing.
  std::vector<ClientMessage> collect_posts() {
    std::vector<ClientMessage> out;
    if (!is_server()) {
      send_outbox();
      return out;
    }
    receive_all(FrameKind::message, -1, [&](const FrameView& f, int from) {
      check_routing(f, from);
      ClientMessage m{f.header.client, std::vector<std::uint8_t>(std::size_t(f.header.count))};
      f.copy_to(std::span<std::uint8_t>(m.bytes));
      out.push_back(std::move(m));
    });
    detail::sort_messages(out);
    return out;
  }

  /// Collective. Rank 0 sends each client rank a `count` frame and the messages addressed to its clients
  /// (rank 0 refuses a message to a client id < 0); each client rank returns those, sorted by client.
  std::vector<ClientMessage> deliver(std::vector<ClientMessage> messages) {
    std::vector<ClientMessage> out;
    if (is_server()) {
      detail::sort_messages(messages);
      std::vector<std::vector<std::vector<std::byte>>> per_rank{std::size_t(m_size)};
      for (const auto& m : messages) {
        FEDMOE_CHECK(m.client >= 0, "MpiTransport::deliver: a message to client ", m.client, ", expected an id >= 0");
        per_rank[std::size_t(owner(m.client))].push_back(
            encode_frame(FrameKind::message, m.client, 0, std::span<const std::uint8_t>(m.bytes)));
      }
      for (int to = 1; to < m_size; ++to) {
        const auto& frames = per_rank[std::size_t(to)];
        const auto head = encode_frame(FrameKind::count, -1, std::int64_t(frames.size()), std::span<const double>());
        MPI_Send(head.data(), int(head.size()), MPI_BYTE, to, tag_downlink, m_comm);
        for (const auto& f : frames) {
          FEDMOE_CHECK(f.size() < (std::size_t(1) << 31), "MpiTransport: a frame of ", f.size(),
                       " bytes, expected < 2^31 (MPI message size limit)");
          MPI_Send(f.data(), int(f.size()), MPI_BYTE, to, tag_downlink, m_comm);
        }
      }
      return out;
    }
    const auto head = receive_from(0, tag_downlink);
    const std::int64_t n = check_frame<double>(head, FrameKind::count, 0, "rank 0").header.aux;
    FEDMOE_CHECK(n >= 0, "message from rank 0: announces ", n, " frames, expected >= 0");
    for (std::int64_t i = 0; i < n; ++i) {
      const auto bytes = receive_from(0, tag_downlink);
      const FrameView f = check_frame<std::uint8_t>(bytes, FrameKind::message, -1, "rank 0");
      FEDMOE_CHECK(owns(f.header.client), "message from rank 0: a message for client ", f.header.client,
                   ", which rank ", m_rank, " does not host");
      ClientMessage m{f.header.client, std::vector<std::uint8_t>(std::size_t(f.header.count))};
      f.copy_to(std::span<std::uint8_t>(m.bytes));
      out.push_back(std::move(m));
    }
    detail::sort_messages(out);
    return out;
  }

  /// Collective: rank 0's `value` on every rank.
  double share(double value) {
    std::vector<std::byte> frame;
    if (is_server()) frame = encode_frame(FrameKind::value, -1, 0, std::span<const double>(&value, 1));
    bcast_bytes(&frame);
    double v = value;
    if (!is_server()) check_frame<double>(frame, FrameKind::value, 1, "rank 0").copy_to(std::span<double>(&v, 1));
    return v;
  }

  /// Collective. `results` is indexed by client id (size = number of clients) on every rank;
  /// each client rank sends the slots of the clients it hosts, rank 0 fills them in. Only
  /// evaluation metrics cross: accuracies, mean gate values, early-stopping summaries.
  void gather_results(std::vector<ClientResult>& results) {
    if (!is_server()) {
      std::lock_guard lock(m_mutex);
      for (std::size_t k = 0; k < results.size(); ++k)
        if (owns(std::int64_t(k))) {
          const std::vector<std::uint8_t> m = encode_result(results[k]);
          m_outbox.push_back(encode_frame(FrameKind::result, std::int64_t(k), 0, std::span<const std::uint8_t>(m)));
        }
    }
    if (!is_server()) {
      send_outbox();
      return;
    }
    receive_all(FrameKind::result, -1, [&](const FrameView& f, int from) {
      check_routing(f, from);
      FEDMOE_CHECK(std::size_t(f.header.client) < results.size(), "message from rank ", from,
                   ": result of client ", f.header.client, ", expected a client id in [0, ", results.size(), ")");
      std::vector<std::uint8_t> m(std::size_t(f.header.count));
      f.copy_to(std::span<std::uint8_t>(m));
      ClientResult r = decode_result(m);
      FEDMOE_CHECK(r.client == f.header.client, "message from rank ", from, ": the result of client ", r.client,
                   " in a frame for client ", f.header.client);
      results[std::size_t(f.header.client)] = std::move(r);
    });
  }

private:
  void check_routing(const FrameView& f, int from) const {
    FEDMOE_CHECK(f.header.client >= 0 && owner(f.header.client) == from, "message from rank ", from, ": a '",
                 to_string(FrameKind(f.header.kind)), "' message for client ", f.header.client,
                 ", which is hosted by rank ", f.header.client >= 0 ? owner(f.header.client) : -1,
                 ", expected one of rank ", from, "'s clients");
  }

  /// Root: sends the size then the bytes; others: receive both into `bytes`.
  void bcast_bytes(std::vector<std::byte>* bytes) {
    std::uint64_t n = bytes->size();
    MPI_Bcast(&n, 1, MPI_UINT64_T, 0, m_comm);
    if (!is_server()) bytes->resize(std::size_t(n));
    send_chunks(bytes->data(), std::size_t(n), [&](void* p, int len) { MPI_Bcast(p, len, MPI_BYTE, 0, m_comm); });
  }

  // MPI counts are int: very large frames go in 1 GiB pieces (both sides know the total).
  template <class Fn>
  static void send_chunks(std::byte* p, std::size_t n, Fn&& fn) {
    constexpr std::size_t piece = std::size_t(1) << 30;
    do {
      const std::size_t len = std::min(piece, n);
      fn(p, int(len));
      p += len;
      n -= len;
    } while (n > 0);
  }

  /// Client rank: a `count` frame, then every queued frame, to rank 0; empties the queue.
  void send_outbox() {
    std::vector<std::vector<std::byte>> frames;
    {
      std::lock_guard lock(m_mutex);
      frames.swap(m_outbox);
    }
    const auto head = encode_frame(FrameKind::count, -1, std::int64_t(frames.size()), std::span<const double>());
    MPI_Send(head.data(), int(head.size()), MPI_BYTE, 0, tag_uplink, m_comm);
    for (const auto& f : frames) {
      FEDMOE_CHECK(f.size() < (std::size_t(1) << 31), "MpiTransport: a frame of ", f.size(),
                   " bytes, expected < 2^31 (MPI message size limit)");
      MPI_Send(f.data(), int(f.size()), MPI_BYTE, 0, tag_uplink, m_comm);
    }
  }

  /// One message from `from` with `tag`, sized by probing.
  std::vector<std::byte> receive_from(int from, int tag = tag_uplink) {
    MPI_Status status;
    MPI_Probe(from, tag, m_comm, &status);
    int n = 0;
    MPI_Get_count(&status, MPI_BYTE, &n);
    std::vector<std::byte> bytes(std::size_t(std::max(n, 0)));
    MPI_Recv(bytes.data(), n, MPI_BYTE, from, tag, m_comm, MPI_STATUS_IGNORE);
    return bytes;
  }

  /// Rank 0: from each client rank in rank order, a `count` frame then that many `kind` frames.
  template <class Fn>
  void receive_all(FrameKind kind, std::int64_t expected_count, Fn&& on_frame) {
    for (int from = 1; from < m_size; ++from) {
      const std::string source = "rank " + std::to_string(from);
      const auto head = receive_from(from);
      const std::int64_t n = check_frame<double>(head, FrameKind::count, 0, source).header.aux;
      FEDMOE_CHECK(n >= 0, "message from ", source, ": announces ", n, " frames, expected >= 0");
      for (std::int64_t i = 0; i < n; ++i) {
        const auto bytes = receive_from(from);
        if (kind == FrameKind::update) on_frame(check_frame<Scalar>(bytes, kind, expected_count, source), from);
        else if (kind == FrameKind::message || kind == FrameKind::result)
          on_frame(check_frame<std::uint8_t>(bytes, kind, expected_count, source), from);
        else on_frame(check_frame<double>(bytes, kind, expected_count, source), from);
      }
    }
  }

  MPI_Comm m_comm;
  int m_rank = 0, m_size = 0;
  Vector<Scalar> m_global;
  std::vector<Vector<Scalar>> m_extras;
  std::vector<std::vector<std::byte>> m_outbox;
  std::mutex m_mutex;
};

}  // namespace fedmoe
