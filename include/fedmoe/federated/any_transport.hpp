#pragma once
/// @file any_transport.hpp
/// @brief AnyTransport: a Transport chosen at run time (in process, over MPI, or any other), so that a
/// program which can run either compiles its federation loop once.
///
///     AnyTransport<float> t = over_mpi ? AnyTransport<float>(std::in_place_type<MpiTransport<float>>, MPI_COMM_WORLD)
///                                      : AnyTransport<float>(std::in_place_type<InProcessTransport<float>>);
///     train_federated(model, clients, t, config, strategy);
///
/// Every member forwards to the wrapped transport, roles included (`is_server`, `owns`, `share`:
/// transport.hpp's defaults when the wrapped one has none), so the results are bitwise those of the
/// wrapped transport used directly; a call costs one indirect jump, a few per client and round. The
/// protocol messages (MessageTransport) are forwarded when the wrapped transport carries them; when it
/// does not, `carries_messages()` is false and post / collect_posts / deliver throw fedmoe::Error.
/// `gather_results` (a collective: the server process receives every client's personalisation results,
/// MpiTransport's) is forwarded too, and does nothing for a transport without it (one process, which
/// holds every client's results already).
/// The wrapped transport is owned, built in place from `std::in_place_type<T>, args...` (InProcessTransport
/// and MpiTransport cannot be moved; a movable one is passed as the argument of its move constructor). A
/// moved-from AnyTransport, like a moved-from std::unique_ptr, may only be assigned to or destroyed.
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "client_result.hpp"
#include "transport.hpp"

namespace fedmoe {

template <class Scalar = float>
class AnyTransport {
public:
  /// Owns a T built from `args`.
  template <class T, class... Args>
    requires Transport<T, Scalar>
  explicit AnyTransport(std::in_place_type_t<T>, Args&&... args)
      : m_self(std::make_unique<Held<T>>(std::forward<Args>(args)...)) {}

  void broadcast(const Vector<Scalar>& global, const std::vector<Vector<Scalar>>& extras = {}) {
    m_self->broadcast(global, extras);
  }
  const Vector<Scalar>& global() const { return m_self->global(); }
  const std::vector<Vector<Scalar>>& extras() const { return m_self->extras(); }
  void upload(ClientUpdate<Scalar> update) { m_self->upload(std::move(update)); }
  std::vector<ClientUpdate<Scalar>> collect() { return m_self->collect(); }
  void report(const ValidationReport& r) { m_self->report(r); }
  std::vector<ValidationReport> collect_reports() { return m_self->collect_reports(); }

  bool is_server() const { return m_self->is_server(); }
  bool owns(std::int64_t client) const { return m_self->owns(client); }
  double share(double value) { return m_self->share(value); }

  /// True if the wrapped transport carries protocol messages (is a MessageTransport).
  bool carries_messages() const { return m_self->carries_messages(); }
  void post(ClientMessage m) { m_self->post(std::move(m)); }
  std::vector<ClientMessage> collect_posts() { return m_self->collect_posts(); }
  std::vector<ClientMessage> deliver(std::vector<ClientMessage> messages) { return m_self->deliver(std::move(messages)); }
  void gather_results(std::vector<ClientResult>& results) { m_self->gather_results(results); }

private:
  struct Base {
    virtual ~Base() = default;
    virtual void broadcast(const Vector<Scalar>&, const std::vector<Vector<Scalar>>&) = 0;
    virtual const Vector<Scalar>& global() const = 0;
    virtual const std::vector<Vector<Scalar>>& extras() const = 0;
    virtual void upload(ClientUpdate<Scalar>) = 0;
    virtual std::vector<ClientUpdate<Scalar>> collect() = 0;
    virtual void report(const ValidationReport&) = 0;
    virtual std::vector<ValidationReport> collect_reports() = 0;
    virtual bool is_server() const = 0;
    virtual bool owns(std::int64_t) const = 0;
    virtual double share(double) = 0;
    virtual bool carries_messages() const = 0;
    virtual void post(ClientMessage) = 0;
    virtual std::vector<ClientMessage> collect_posts() = 0;
    virtual std::vector<ClientMessage> deliver(std::vector<ClientMessage>) = 0;
    virtual void gather_results(std::vector<ClientResult>&) = 0;
  };

  template <class T>
  struct Held final : Base {
    template <class... Args>
    explicit Held(Args&&... args) : t(std::forward<Args>(args)...) {}
    void broadcast(const Vector<Scalar>& g, const std::vector<Vector<Scalar>>& e) override { t.broadcast(g, e); }
    const Vector<Scalar>& global() const override { return t.global(); }
    const std::vector<Vector<Scalar>>& extras() const override { return t.extras(); }
    void upload(ClientUpdate<Scalar> u) override { t.upload(std::move(u)); }
    std::vector<ClientUpdate<Scalar>> collect() override { return t.collect(); }
    void report(const ValidationReport& r) override { t.report(r); }
    std::vector<ValidationReport> collect_reports() override { return t.collect_reports(); }
    bool is_server() const override { return transport_is_server(t); }
    bool owns(std::int64_t client) const override { return transport_owns(t, client); }
    double share(double v) override { return transport_share(t, v); }
    bool carries_messages() const override { return MessageTransport<T>; }
    void post(ClientMessage m) override {
      if constexpr (MessageTransport<T>) t.post(std::move(m));
      else no_messages("post");
    }
    std::vector<ClientMessage> collect_posts() override {
      if constexpr (MessageTransport<T>) return t.collect_posts();
      else return no_messages("collect_posts");
    }
    std::vector<ClientMessage> deliver(std::vector<ClientMessage> ms) override {
      if constexpr (MessageTransport<T>) return t.deliver(std::move(ms));
      else return no_messages("deliver");
    }
    void gather_results(std::vector<ClientResult>& results) override {
      if constexpr (requires { t.gather_results(results); }) t.gather_results(results);
    }
    [[noreturn]] static std::vector<ClientMessage> no_messages(const char* what) {
      FEDMOE_FAIL("AnyTransport::", what, ": expected a transport that carries protocol messages (post, ",
                  "collect_posts, deliver: a MessageTransport), got one that does not");
    }
    T t;
  };

  std::unique_ptr<Base> m_self;
};

static_assert(Transport<AnyTransport<float>, float> && MessageTransport<AnyTransport<float>>);

}  // namespace fedmoe
