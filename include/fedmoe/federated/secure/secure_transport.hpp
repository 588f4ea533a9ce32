#pragma once
/// @file secure_transport.hpp
/// @brief SecureAggregationTransport<Inner>: secure aggregation (secure_aggregation.hpp) as a Transport
/// decorator, so train_federated runs it unchanged over InProcessTransport or MpiTransport. **Needs
/// libsodium**, like secure_aggregation.hpp (fedmoe.hpp includes neither).
///
/// What changes for the federation: a client's `upload(update)` keeps the update on the client's own
/// process (it never reaches the inner transport in the clear); `collect()`, a collective, then runs
/// one secure aggregation of the round's uploads over the inner transport's protocol messages
/// (post / collect_posts / deliver, see transport.hpp) and gives the server **one** update: the
/// weighted mean sum_k n_k d_k / sum_k n_k of the contributors (client id `secure_sum_client`,
/// num_samples = the rounded total weight), decoded from the exact sum in Z_2^32. Everything else
/// (broadcast, validation reports, roles) is the inner transport's.
///
/// One collect(), every process in the same order:
///
/// | step | hosted client (any process)                          | server process                           |
/// |------|------------------------------------------------------|------------------------------------------|
/// | join | encode n_k d_k in fixed point (FixedPointCodec); post "join" or "decline" (the update exceeds the bound or is not finite) | roster: the joined clients by id, n, t; deliver it |
/// | 0-3  | SecAggClient: advertise keys, share keys, masked input, unmask | SecAggServer: receive, route, finish |
/// | sum  |                                                      | decode the sum: the round's one update   |
///
/// - t is `threshold` (fixed): a round with fewer than t joined clients, or in which more than n - t
///   drop, aggregates nothing (collect returns no update, the server does not step), and
///   last_round() says why. Every protocol error from one client's message (a malformed, replayed or
///   misattributed message) drops that client, named in last_round().dropped_by_error.
/// - The fixed-point scale comes from `value_bound` B (the largest |n_k d_k,i|), `weight_bound` W
///   (the largest n_k) and `max_clients` (the most clients of a round): a client whose update
///   exceeds B declines, never clamped; the per-coordinate error of the decoded weighted sum is at
///   most contributors * 0.5 / s (FixedPointCodec::sum_error_bound), before the division by the total
///   weight.
/// - The masks cancel exactly, so the result is bitwise the same for any keys: a run is reproducible
///   for any thread count and over MPI with the system's CSPRNG.
/// - The complete graph of Bonawitz et al. (SecAgg+'s sparse graph, which secure_aggregation.hpp
///   implements, is not offered here: its threshold is relative to the neighbourhood, not the round).
/// - Not supported (refused by train_federated's callers, e.g. fedmoe-paper): robust aggregators
///   (they need the individual updates), client algorithms with extra vectors (SCAFFOLD: its server
///   state needs them individually) and server-side model-poisoning simulations (they act on the
///   individual updates the server no longer sees).
#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../../core/parallel.hpp"
#include "../transport.hpp"
#include "fixed_point.hpp"
#include "secure_aggregation.hpp"

namespace fedmoe {

/// Parameters of SecureAggregationTransport.
struct SecureAggregationConfig {
  std::uint32_t threshold = 2;       ///< t: shares that recover a secret; max_clients/2 < t <= max_clients
  std::uint32_t max_clients = 100;   ///< the most clients of a round (sets the fixed-point scale)
  double value_bound = 1e3;          ///< B: the largest |n_k * delta_k,i| a client may encode
  double weight_bound = 1e6;         ///< W: the largest sample count n_k
  std::size_t threads = 1;           ///< threads for the hosted clients' protocol work
  /// FOR TESTS ONLY: deterministic keys from this seed (empty: libsodium's CSPRNG).
  std::optional<std::uint64_t> deterministic_seed;
  /// Simulated dropouts: drop(round, client, stage) true makes the client vanish before that stage
  /// (0: advertise keys, 1: share keys, 2: masked input, 3: unmask). Evaluated on the client's process.
  std::function<bool(std::uint64_t, std::int64_t, int)> drop;

  void validate() const {
    FEDMOE_CHECK(max_clients >= 2 && max_clients <= secagg_max_clients, "SecureAggregationConfig: expected 2 <= ",
                 "max_clients <= ", secagg_max_clients, ", got ", max_clients);
    // t > n/2 for every round's n <= max_clients (see secure_aggregation.hpp, "Why t > h/2").
    FEDMOE_CHECK(2 * std::uint64_t(threshold) > max_clients && threshold <= max_clients, "SecureAggregationConfig: ",
                 "expected a threshold t with ", max_clients, "/2 < t <= ", max_clients,
                 " (max_clients, the most clients of a round), got t = ", threshold);
    FEDMOE_CHECK(threads >= 1, "SecureAggregationConfig: expected threads >= 1, got ", threads);
    (void)FixedPointCodec(value_bound, weight_bound, max_clients);  // checks B and W
  }
};

/// What the last secure aggregation did.
struct SecureRoundInfo {
  std::uint64_t round_id = 0;
  std::uint32_t joined = 0;        ///< n: clients in the protocol
  std::uint32_t declined = 0;      ///< uploads that could not be encoded (bound exceeded, non-finite)
  std::uint32_t contributors = 0;  ///< inputs in the sum
  std::uint32_t dropped = 0;       ///< joined, not in the sum
  std::vector<std::int64_t> dropped_by_error;  ///< clients whose message was refused
  bool ok = false;                 ///< the sum was recovered
  std::string note;                ///< why not
};

template <class Inner, class Scalar = float>
  requires MessageTransport<Inner>
class SecureAggregationTransport {
public:
  static constexpr std::int64_t secure_sum_client = -1;
  /// train_federated refuses a DP aggregator over this transport (see federation.hpp).
  static constexpr bool aggregates_securely = true;

  SecureAggregationTransport(Inner& inner, SecureAggregationConfig config) : m_inner(inner), m_config(std::move(config)) {
    m_config.validate();
    FEDMOE_CHECK(sodium_init() >= 0, "SecureAggregationTransport: libsodium failed to initialise");
  }

  // ---- the inner transport's, unchanged ----
  void broadcast(const Vector<Scalar>& global, const std::vector<Vector<Scalar>>& extras = {}) {
    m_inner.broadcast(global, extras);
  }
  const Vector<Scalar>& global() const { return m_inner.global(); }
  const std::vector<Vector<Scalar>>& extras() const { return m_inner.extras(); }
  void report(const ValidationReport& r) { m_inner.report(r); }
  std::vector<ValidationReport> collect_reports() { return m_inner.collect_reports(); }
  bool is_server() const { return transport_is_server(m_inner); }
  bool owns(std::int64_t client) const { return transport_owns(m_inner, client); }
  double share(double v) { return transport_share(m_inner, v); }

  /// Keeps the hosted client's update here, on its own process, until collect().
  void upload(ClientUpdate<Scalar> update) {
    FEDMOE_CHECK(update.extras.empty(), "SecureAggregationTransport: client ", update.client, " uploads ",
                 update.extras.size(), " extra vectors; secure aggregation carries the delta only");
    std::lock_guard lock(m_mutex);
    m_pending.push_back(std::move(update));
  }

  /// Collective: one secure aggregation of the uploads since the last call (see the file comment).
  std::vector<ClientUpdate<Scalar>> collect() {
    const std::uint64_t round_id = ++m_round;
    m_last = SecureRoundInfo{};
    m_last.round_id = round_id;
    std::vector<ClientUpdate<Scalar>> pending;
    {
      std::lock_guard lock(m_mutex);
      pending.swap(m_pending);
    }
    std::sort(pending.begin(), pending.end(), [](const auto& a, const auto& b) { return a.client < b.client; });
    const FixedPointCodec codec(m_config.value_bound, m_config.weight_bound, m_config.max_clients);
    const Index p = global().size();

    // Join: encode on the client's process; post "join" or "decline".
    std::map<std::int64_t, std::vector<std::uint32_t>> encoded;
    for (auto& u : pending) {
      std::vector<std::uint8_t> msg{std::uint8_t(0)};
      if (u.delta.size() == p && detail::all_finite(u.delta) && fits(u, codec)) {
        encoded[u.client] = codec.encode(u);
        msg[0] = 1;
      }
      m_inner.post({u.client, std::move(msg)});
    }
    pending.clear();
    std::vector<std::int64_t> roster;
    std::vector<ClientMessage> down;
    if (is_server()) {
      for (const auto& m : m_inner.collect_posts()) {
        if (m.bytes.size() == 1 && m.bytes[0] == 1) roster.push_back(m.client);
        else ++m_last.declined;
      }
      m_last.joined = std::uint32_t(roster.size());
      if (roster.size() < std::max<std::size_t>(m_config.threshold, 2) || roster.size() > m_config.max_clients) {
        m_last.note = "secure aggregation: " + std::to_string(roster.size()) + " clients joined, expected " +
                      std::to_string(m_config.threshold) + " to " + std::to_string(m_config.max_clients);
        roster.clear();
      }
      for (std::int64_t c : roster) down.push_back({c, roster_message(round_id, roster)});
    } else {
      (void)m_inner.collect_posts();
    }
    // Every joined client learns the roster: its protocol index and the configuration.
    std::vector<Party> parties;
    for (auto& m : m_inner.deliver(std::move(down))) {
      auto it = encoded.find(m.client);
      FEDMOE_CHECK(it != encoded.end(), "SecureAggregationTransport: a roster for client ", m.client,
                   ", which did not join on this process");
      parties.push_back(parse_roster(m, round_id, std::move(it->second)));
    }
    const bool running = is_server() ? !roster.empty() : true;
    SecAggConfig cfg = is_server() && running ? config_for(round_id, roster) : SecAggConfig{};
    std::optional<SecAggServer> server;
    if (is_server() && running) server.emplace(cfg);
    std::map<std::int64_t, std::uint32_t> index_of;
    for (std::uint32_t i = 0; i < roster.size(); ++i) index_of[roster[i]] = i;

    // Round 0: keys.
    client_step(parties, 0, [&](Party& me) { return me.client->advertise_keys().serialize(); });
    down = server_step(server, index_of, [&](SecAggServer& s, const std::vector<std::uint8_t>& b, std::uint32_t idx) {
      const auto m = secagg::AdvertiseKeys::parse(b);
      check_sender(m.keys.client, idx);
      s.receive(m);
    }, [&](SecAggServer& s) {
      const auto dir = s.key_directory().serialize();
      std::vector<ClientMessage> out;
      for (std::uint32_t i : s.advertised()) out.push_back({roster[i], dir});
      return out;
    });
    // Round 1: shares.
    deliver_to(parties, std::move(down));
    client_step(parties, 1, [&](Party& me) {
      return me.client->share_keys(secagg::KeyDirectory::parse(me.inbox)).serialize();
    });
    down = server_step(server, index_of, [&](SecAggServer& s, const std::vector<std::uint8_t>& b, std::uint32_t idx) {
      const auto m = secagg::ShareKeys::parse(b);
      check_sender(m.sender, idx);
      s.receive(m);
    }, [&](SecAggServer& s) {
      std::vector<ClientMessage> out;
      for (const auto& d : s.share_deliveries()) out.push_back({roster[d.recipient], d.serialize()});
      return out;
    });
    // Round 2: masked inputs.
    deliver_to(parties, std::move(down));
    client_step(parties, 2, [&](Party& me) {
      return me.client->masked_input(secagg::ShareDelivery::parse(me.inbox), me.input).serialize();
    });
    down = server_step(server, index_of, [&](SecAggServer& s, const std::vector<std::uint8_t>& b, std::uint32_t idx) {
      const auto m = secagg::MaskedInput::parse(b);
      check_sender(m.sender, idx);
      s.receive(m);
    }, [&](SecAggServer& s) {
      const auto req = s.unmask_request();
      const auto bytes = req.serialize();
      std::vector<ClientMessage> out;
      for (std::uint32_t i : req.survivors) out.push_back({roster[i], bytes});
      return out;
    });
    // Round 3: unmasking.
    deliver_to(parties, std::move(down));
    client_step(parties, 3, [&](Party& me) {
      return me.client->unmask(secagg::UnmaskRequest::parse(me.inbox)).serialize();
    });
    std::vector<ClientUpdate<Scalar>> out;
    std::optional<SecAggResult> result;
    (void)server_step(server, index_of, [&](SecAggServer& s, const std::vector<std::uint8_t>& b, std::uint32_t idx) {
      const auto m = secagg::UnmaskResponse::parse(b);
      check_sender(m.sender, idx);
      s.receive(m);
    }, [&](SecAggServer& s) {
      result = s.finish();
      return std::vector<ClientMessage>{};
    });
    if (result) {
      const FixedPointSum sum = codec.decode_sum(result->sum, std::uint32_t(result->contributors.size()));
      m_last.contributors = std::uint32_t(result->contributors.size());
      m_last.dropped = m_last.joined - m_last.contributors;
      m_last.ok = true;
      ClientUpdate<Scalar> u;
      u.client = secure_sum_client;
      u.delta = sum.mean<Scalar>();
      u.num_samples = std::max<Index>(1, Index(std::llround(sum.total_weight)));
      out.push_back(std::move(u));
    } else if (is_server() && m_last.note.empty()) {
      m_last.note = "secure aggregation: not recovered";
    }
    return out;
  }

  /// What the last collect() did (the counts on the server process).
  const SecureRoundInfo& last_round() const { return m_last; }
  /// The state across rounds (io/archive.hpp): the round counter that the protocol's keys and masks
  /// are bound to.
  template <class Ar>
  void serialize(Ar& ar) { ar("round", m_round); }
  const SecureAggregationConfig& config() const { return m_config; }

  // Protocol messages of the inner transport stay available to other protocols.
  void post(ClientMessage m) { m_inner.post(std::move(m)); }
  std::vector<ClientMessage> collect_posts() { return m_inner.collect_posts(); }
  std::vector<ClientMessage> deliver(std::vector<ClientMessage> ms) { return m_inner.deliver(std::move(ms)); }

private:
  /// A hosted client inside one aggregation.
  struct Party {
    std::int64_t id = -1;
    std::optional<SecAggClient> client;
    std::vector<std::uint32_t> input;
    std::vector<std::uint8_t> inbox;
    bool present = true;
  };

  bool fits(const ClientUpdate<Scalar>& u, const FixedPointCodec& codec) const {
    const double w = double(u.num_samples);
    if (!(w > 0 && w <= codec.weight_bound())) return false;
    return double(u.delta.cwiseAbs().maxCoeff()) * w <= codec.value_bound();
  }

  SecAggConfig config_for(std::uint64_t round_id, const std::vector<std::int64_t>& roster) const {
    SecAggConfig c;
    c.round_id = round_id;
    c.num_clients = std::uint32_t(roster.size());
    c.threshold = m_config.threshold;  // <= num_clients: a round with fewer joined clients never starts
    c.vector_length = FixedPointCodec::encoded_length(global().size());
    return c;
  }

  /// Roster message: round id, t, k, L, then the joined client ids (ascending).
  std::vector<std::uint8_t> roster_message(std::uint64_t round_id, const std::vector<std::int64_t>& roster) const {
    const SecAggConfig c = config_for(round_id, roster);
    std::vector<std::uint64_t> words{round_id, c.threshold, 0, c.vector_length, roster.size()};
    for (std::int64_t id : roster) words.push_back(std::uint64_t(id));
    std::vector<std::uint8_t> bytes(words.size() * 8);
    std::memcpy(bytes.data(), words.data(), bytes.size());
    return bytes;
  }

  Party parse_roster(const ClientMessage& m, std::uint64_t round_id, std::vector<std::uint32_t> input) const {
    FEDMOE_CHECK(m.bytes.size() >= 40 && m.bytes.size() % 8 == 0, "SecureAggregationTransport: client ", m.client,
                 " received a roster of ", m.bytes.size(), " bytes, expected 40 + 8 n");
    std::vector<std::uint64_t> w(m.bytes.size() / 8);
    std::memcpy(w.data(), m.bytes.data(), m.bytes.size());
    FEDMOE_CHECK(w[0] == round_id && w[4] == w.size() - 5 && w[4] >= 2, "SecureAggregationTransport: client ", m.client,
                 " received a roster for round ", w[0], " of ", w[4], " clients, expected round ", round_id,
                 " with ", w.size() - 5, " ids");
    SecAggConfig c;
    c.round_id = round_id;
    c.num_clients = std::uint32_t(w[4]);
    c.threshold = std::uint32_t(w[1]);
    c.vector_length = w[3];
    const auto at = std::find(w.begin() + 5, w.end(), std::uint64_t(m.client));
    FEDMOE_CHECK(at != w.end(), "SecureAggregationTransport: client ", m.client, " is not on its own roster");
    FEDMOE_CHECK(input.size() == c.vector_length, "SecureAggregationTransport: client ", m.client, " encoded ",
                 input.size(), " words, the roster expects ", c.vector_length);
    const auto index = std::uint32_t(at - (w.begin() + 5));
    Party party;
    party.id = m.client;
    party.input = std::move(input);
    party.client.emplace(c, index,
                         m_config.deterministic_seed
                             ? SecAggEntropy::deterministic(*m_config.deterministic_seed,
                                                            (round_id << 21) + std::uint64_t(m.client))
                             : SecAggEntropy::system());
    return party;
  }

  static void check_sender(std::uint32_t claimed, std::uint32_t index) {
    FEDMOE_CHECK(claimed == index, "secure aggregation: a message claiming protocol index ", claimed,
                 " from the client at index ", index, " (misattributed)");
  }

  bool drops(const Party& me, int stage) const { return m_config.drop && m_config.drop(m_round, me.id, stage); }

  /// Every present hosted party runs `make` (in parallel) and posts the result; a party whose step
  /// throws (it refused a message) or that drops, vanishes.
  template <class Make>
  void client_step(std::vector<Party>& parties, int stage, Make make) {
    std::vector<std::optional<std::vector<std::uint8_t>>> msgs(parties.size());
    parallel_for(parties.size(), m_config.threads, [&](std::size_t i, std::size_t) {
      Party& me = parties[i];
      if (!me.present || drops(me, stage)) {
        me.present = false;
        return;
      }
      try {
        msgs[i] = make(me);
      } catch (const Error&) {
        me.present = false;  // it refused what it received: it leaves the protocol
      }
    });
    for (std::size_t i = 0; i < parties.size(); ++i)
      if (msgs[i]) m_inner.post({parties[i].id, std::move(*msgs[i])});
  }

  /// Server: receive each posted message (a refused one drops its sender), then close the step.
  template <class Receive, class Close>
  std::vector<ClientMessage> server_step(std::optional<SecAggServer>& server, const std::map<std::int64_t, std::uint32_t>& index_of,
                                         Receive receive, Close close) {
    std::vector<ClientMessage> posts = m_inner.collect_posts();
    if (!server) return {};
    for (const auto& m : posts) {
      const auto it = index_of.find(m.client);
      if (it == index_of.end()) {
        m_last.dropped_by_error.push_back(m.client);
        continue;
      }
      try {
        receive(*server, m.bytes, it->second);
      } catch (const Error&) {
        m_last.dropped_by_error.push_back(m.client);
      }
    }
    try {
      return close(*server);
    } catch (const Error& e) {
      m_last.note = e.what();
      server.reset();  // too few left: the round aggregates nothing
      return {};
    }
  }

  void deliver_to(std::vector<Party>& parties, std::vector<ClientMessage> down) {
    for (auto& p : parties) p.inbox.clear();
    std::vector<ClientMessage> mine = m_inner.deliver(std::move(down));
    std::vector<bool> got(parties.size(), false);
    for (auto& m : mine)
      for (std::size_t i = 0; i < parties.size(); ++i)
        if (parties[i].id == m.client) {
          parties[i].inbox = std::move(m.bytes);
          got[i] = true;
        }
    for (std::size_t i = 0; i < parties.size(); ++i)
      if (!got[i]) parties[i].present = false;  // the server left it out
  }

  Inner& m_inner;
  SecureAggregationConfig m_config;
  std::vector<ClientUpdate<Scalar>> m_pending;
  std::mutex m_mutex;
  std::uint64_t m_round = 0;
  SecureRoundInfo m_last;
};

}  // namespace fedmoe
