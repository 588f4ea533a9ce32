#pragma once
/// @file common.hpp
/// @brief What the personalised-FL baselines share: parameter ranges (the split of the ONE
/// contiguous parameter vector into a personal and a shared part), an optimizer that updates only
/// some ranges, and `personal_parameters_of` (every client's final personal model after a federation).
///
/// Parameter ranges. A model's parameters are one vector, layer after layer (models/sequential.hpp),
/// so "the head" or "the body" of a model is a contiguous range [begin, begin + size) of it:
/// - `layer_range(model, first, last)`: the parameters of layers [first, last) of a Sequential;
/// - `head_range(model, k)`: the last k layers **that have parameters** (activations, pooling and
///   dropout have none), e.g. head_range(mlp(...), 1) is the last Dense, 200 C + C values;
/// - `body_range(model, k)`: everything before head_range(model, k).
/// Any other split is a ParamRange written by hand.
///
/// Personal parameters. Every algorithm of this folder has a member
///
///     Vector<S> personal_parameters(M& workspace, const Vector<S>& global, const State& state,
///                                   const LocalData<S>& data, Rng& rng) const
///
/// giving the client's final personal model from the final global parameters and its State (see each
/// algorithm for what exactly). A client whose State is empty (never sampled, or opted out: train_federated
/// never touches its entry) gets the algorithm's own post-hoc personalisation from the global model on its
/// local training data, for the fixed number of epochs in the algorithm's config; `workspace` is any model
/// of the global architecture (its parameters are overwritten) and `rng` is used only then.
/// `personal_parameters_of` runs it for every client, client k on Rng::stream(seed, 2^61 + id_k), on
/// `threads` threads: the result is bitwise the same for any thread count. Over a distributed transport
/// only the hosted clients' states are filled: call `personal_parameters` for those clients only (an
/// empty entry of a client hosted elsewhere would be taken for a client never sampled).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../../core/parallel.hpp"
#include "../../optimizers/optimizer.hpp"
#include "../client.hpp"
#include "../local_training.hpp"

namespace fedmoe {

/// The parameters [begin, begin + size) of a model's parameter vector.
struct ParamRange {
  Index begin = 0;
  Index size = 0;
  Index end() const { return begin + size; }
  bool operator==(const ParamRange&) const = default;
};

/// The parameters of layers [first, last) of a Sequential (its `offset(i)` is layer i's slice start).
template <class M>
  requires requires(const M& m) { M::depth; m.offset(std::size_t(0)); }
ParamRange layer_range(const M& model, std::size_t first, std::size_t last) {
  FEDMOE_CHECK(first <= last && last <= M::depth, "layer_range: expected layers 0 <= first <= last <= ", M::depth,
               ", got first ", first, " and last ", last);
  return {model.offset(first), model.offset(last) - model.offset(first)};
}

/// The last `k` layers of a Sequential that have parameters (the "head" of FedPer, FedRep, LG-FedAvg).
template <class M>
  requires requires(const M& m) { M::depth; m.offset(std::size_t(0)); }
ParamRange head_range(const M& model, std::size_t k = 1) {
  std::size_t with_params = 0;
  for (std::size_t i = 0; i < M::depth; ++i) with_params += model.offset(i + 1) > model.offset(i);
  FEDMOE_CHECK(k >= 1 && k < with_params, "head_range: expected 1 <= k < ", with_params,
               " (the model's layers with parameters; the body must keep at least one), got ", k);
  std::size_t first = M::depth, found = 0;
  while (found < k) {
    --first;
    found += model.offset(first + 1) > model.offset(first);
  }
  return layer_range(model, first, M::depth);
}

/// Everything before head_range(model, k) (the "body", or representation).
template <class M>
  requires requires(const M& m) { M::depth; m.offset(std::size_t(0)); }
ParamRange body_range(const M& model, std::size_t k = 1) {
  return {0, head_range(model, k).begin};
}

namespace detail {

/// Throws unless `r` is a proper, non-empty part of a vector of `p` parameters.
inline void check_personal_range(const char* who, ParamRange r, Index p) {
  FEDMOE_CHECK(r.begin >= 0 && r.size > 0 && r.end() <= p && r.size < p, who,
               ": expected a personal part [begin, begin + size) with size > 0 inside the model's ", p,
               " parameters and smaller than all of them, got [", r.begin, ", ", r.end(), ")");
}

/// The ranges of [0, p) outside `r` (one or two).
inline std::vector<ParamRange> complement(ParamRange r, Index p) {
  std::vector<ParamRange> out;
  if (r.begin > 0) out.push_back({0, r.begin});
  if (r.end() < p) out.push_back({r.end(), p - r.end()});
  return out;
}

/// An Optimizer that updates only `ranges` of the parameter vector: the parameters outside them stay
/// bitwise unchanged (frozen), whatever the inner rule (weight decay included). The inner optimizer
/// sees the ranges concatenated, so its state is sized to the trainable parameters only (PyTorch's
/// "optimizer over a parameter group"). Buffers are sized on the first step; later steps allocate nothing.
template <Optimizer Opt>
class RangeOptimizer {
public:
  using scalar_type = typename Opt::scalar_type;
  using state_type = typename Opt::state_type;

  RangeOptimizer(Opt inner, std::vector<ParamRange> ranges) : m_inner(std::move(inner)), m_ranges(std::move(ranges)) {
    for (const ParamRange& r : m_ranges) m_size += r.size;
  }

  void step(Vector<scalar_type>& params, const Vector<scalar_type>& grads) {
    FEDMOE_CHECK(params.size() == grads.size(), "RangeOptimizer: expected gradients of size ", params.size(),
                 " (the parameters), got ", grads.size());
    m_p.resize(m_size);
    m_g.resize(m_size);
    Index at = 0;
    for (const ParamRange& r : m_ranges) {
      FEDMOE_CHECK(r.end() <= params.size(), "RangeOptimizer: expected parameters covering [", r.begin, ", ",
                   r.end(), "), got ", params.size());
      m_p.segment(at, r.size) = params.segment(r.begin, r.size);
      m_g.segment(at, r.size) = grads.segment(r.begin, r.size);
      at += r.size;
    }
    m_inner.step(m_p, m_g);
    at = 0;
    for (const ParamRange& r : m_ranges) {
      params.segment(r.begin, r.size) = m_p.segment(at, r.size);
      at += r.size;
    }
  }
  void reset() { m_inner.reset(); }
  const state_type& state() const { return m_inner.state(); }
  void set_state(const state_type& s) { m_inner.set_state(s); }

private:
  Opt m_inner;
  std::vector<ParamRange> m_ranges;
  Index m_size = 0;
  Vector<scalar_type> m_p, m_g;
};

/// The client's data as a LocalData (no label flipping: personalisation is the client's own business).
template <class S>
LocalData<S> local_data_of(const Client<S>& client) {
  return LocalData<S>{client.train_data(), client.split().train, false};
}

inline std::uint64_t personal_stream_id(std::int64_t client) {
  return (std::uint64_t(1) << 61) + std::uint64_t(client);
}

}  // namespace detail

/// Every client's final personal parameters (indexed like `clients`): `algorithm.personal_parameters`
/// from `global` and the client's entry of `states` (as left by train_federated; an empty `states`
/// means nobody has state). Opted-out clients are included: they have no state, so they get the
/// algorithm's post-hoc personalisation on their own data. Client k draws from
/// Rng::stream(seed, 2^61 + id_k); clients run on `threads` threads, each with its own copy of
/// `prototype` as workspace, so the result is bitwise the same for any thread count.
template <class Alg, Model M>
std::vector<Vector<typename M::scalar_type>> personal_parameters_of(
    const Alg& algorithm, const M& prototype, const Vector<typename M::scalar_type>& global,
    const std::vector<Client<typename M::scalar_type>>& clients, const std::vector<typename Alg::State>& states,
    std::uint64_t seed, std::size_t threads = 1) {
  using S = typename M::scalar_type;
  FEDMOE_CHECK(states.empty() || states.size() == clients.size(), "personal_parameters_of: expected one state per ",
               "client (", clients.size(), ") or none, got ", states.size());
  FEDMOE_CHECK(global.size() == prototype.num_params(), "personal_parameters_of: expected a global model of ",
               prototype.num_params(), " parameters (the prototype's), got ", global.size());
  std::vector<Vector<S>> out(clients.size());
  std::vector<M> workspaces(std::max<std::size_t>(1, threads), prototype);
  const typename Alg::State empty{};
  parallel_for(clients.size(), workspaces.size(), [&](std::size_t i, std::size_t w) {
    Rng rng = Rng::stream(seed, detail::personal_stream_id(clients[i].id()));
    out[i] = algorithm.personal_parameters(workspaces[w], global, states.empty() ? empty : states[i],
                                           detail::local_data_of(clients[i]), rng);
  });
  return out;
}

}  // namespace fedmoe
