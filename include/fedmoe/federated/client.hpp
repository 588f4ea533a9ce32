#pragma once
/// @file client.hpp
/// @brief Client: a federation member's data (indices into shared datasets) and its
/// side of the protocol.
///
/// A client talks to the server only through a Transport: it reads the broadcast global
/// parameters (and the algorithm's extra vectors), and - only if it has not opted out - uploads
/// the change its client algorithm made to them.
/// An opted-out client may download the global model but never sends anything
/// (participate() and report_validation() refuse). The client's specialist and gate are
/// not members here: they are created and kept by personalisation (federated/personalize.hpp)
/// and no function of this header or the transport accepts them.
#include <cstdint>

#include "../data/partition.hpp"
#include "../training/trainer.hpp"
#include "local_training.hpp"
#include "transport.hpp"

namespace fedmoe {

template <class Scalar = float>
class Client {
public:
  Client(std::int64_t id, const Dataset<Scalar>& train_data, ClientSplit split, bool opt_out)
      : m_id(id), m_data(&train_data), m_split(std::move(split)), m_opt_out(opt_out) {
    FEDMOE_CHECK(!m_split.train.empty(), "Client ", id, ": expected training samples, got 0");
  }
  Client(std::int64_t, const Dataset<Scalar>&&, ClientSplit, bool) = delete;

  std::int64_t id() const { return m_id; }
  bool opted_out() const { return m_opt_out; }
  const ClientSplit& split() const { return m_split; }
  const Dataset<Scalar>& train_data() const { return *m_data; }

  /// Participation in a round: runs the client algorithm (local_training.hpp) on `workspace` (any
  /// model of the global architecture) from the broadcast global model and its extras, with the
  /// client's own persistent `state`, and uploads the update. `flip_labels` makes it a simulated
  /// label-flipping attacker (attacks.hpp). The state never reaches the transport.
  template <Model M, Transport<Scalar> T, class Algorithm>
  void participate(T& transport, M& workspace, const Algorithm& algorithm, typename Algorithm::State& state,
                   Rng& rng, bool flip_labels = false) const {
    FEDMOE_CHECK(!m_opt_out, "Client ", m_id, " opted out of the federation: it never sends updates");
    check_broadcast(transport.global(), workspace.num_params());
    const GlobalView<Scalar> global{transport.global(), std::span<const Vector<Scalar>>(transport.extras())};
    ClientUpdate<Scalar> update =
        algorithm.train(workspace, global, LocalData<Scalar>{*m_data, m_split.train, flip_labels}, state, rng);
    update.client = m_id;
    transport.upload(std::move(update));
  }

  /// Reports the broadcast global model's validation loss on this client's validation set.
  template <Model M, Transport<Scalar> T>
  void report_validation(T& transport, M& workspace) const {
    FEDMOE_CHECK(!m_opt_out, "Client ", m_id, " opted out of the federation: it never sends reports");
    if (m_split.val.empty()) return;
    check_broadcast(transport.global(), workspace.num_params());
    workspace.parameters() = transport.global();
    const EvalResult r = evaluate(workspace, *m_data, m_split.val);
    transport.report(ValidationReport{m_id, r.loss * double(r.samples), r.samples});
  }

private:
  // A size mismatch (e.g. nothing broadcast yet) would silently resize the workspace's parameters.
  void check_broadcast(const Vector<Scalar>& global, Index expected) const {
    FEDMOE_CHECK(global.size() == expected, "Client ", m_id, ": expected a broadcast global model of ", expected,
                 " parameters (the workspace's), got ", global.size());
  }

  std::int64_t m_id;
  const Dataset<Scalar>* m_data;
  ClientSplit m_split;
  bool m_opt_out;
};

}  // namespace fedmoe
