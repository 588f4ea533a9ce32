// Exact resume of a federation (io/archive.hpp, FederationCheckpoint): a run resumed from any of its
// saved states ends bitwise where the uninterrupted run ends (result, model, client states), for
// every kind of state that carries over; a state from another run or a damaged one is refused with
// the field that differs. (fedmoe-paper's --checkpoint / --resume with kill -9: tests/resume/.)
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <fedmoe/fedmoe.hpp>

#include "synthetic_data.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

namespace {

using test::Blobs;

FederationConfig resume_config(int rounds, int patience = 1000) {
  FederationConfig c;
  c.max_rounds = rounds;
  c.check_every = 2;
  c.patience = patience;
  c.seed = 8;
  return c;
}

/// Every field of `value`, as the bytes of a state file: equal bytes = bitwise equal fields.
template <class T>
std::string bytes_of(const T& value, Index parameters) {
  StateWriter w(parameters);
  w("value", value);
  return w.bytes();
}

struct Outcome {
  FederationResult result;
  Vector<float> parameters;
  std::string states;  // bytes_of the client states
};

/// One run of `make()`'s strategy with `checkpoint`; every saved state is appended to `saves`.
template <class Make>
Outcome run(const Blobs& b, FederationConfig cfg, Make make, std::vector<std::string>* saves, std::string resume = {},
            std::size_t threads = 1) {
  auto strategy = make();
  std::vector<typename decltype(strategy.algorithm)::State> states;
  Mlp<float> model = b.model();
  InProcessTransport<float> transport;
  cfg.threads = threads;
  cfg.checkpoint.resume = std::move(resume);
  if (saves) {
    cfg.checkpoint.every = 3;
    cfg.checkpoint.save = [saves](int, bool, const std::string& s) { saves->push_back(s); };
  }
  Outcome o;
  o.result = train_federated(model, b.clients, transport, cfg, strategy, states);
  o.parameters = model.parameters();
  o.states = bytes_of(states, model.num_params());
  return o;
}

/// The uninterrupted run, then a run resumed from each state it saved (as after a crash right after
/// that save): each must end bitwise equal, whatever the thread count.
template <class Make>
void check_exact_resume(const Blobs& b, const FederationConfig& cfg, Make make) {
  const Index params = b.model().num_params();
  const Outcome plain = run(b, cfg, make, nullptr);
  std::vector<std::string> saves;
  const Outcome saving = run(b, cfg, make, &saves);
  REQUIRE(bytes_of(saving.result, params) == bytes_of(plain.result, params));  // saving changes nothing
  REQUIRE(saves.size() >= 2);
  for (std::size_t k = 0; k < saves.size(); ++k) {
    INFO("resumed from save " << k << " of " << saves.size());
    std::vector<std::string> again;
    const Outcome resumed = run(b, cfg, make, &again, saves[k], k % 2 ? 2 : 1);
    CHECK(bytes_of(resumed.result, params) == bytes_of(plain.result, params));
    CHECK(test::same_vector(resumed.parameters, plain.parameters));
    CHECK(resumed.states == plain.states);
    REQUIRE(!again.empty());
    CHECK(again.back() == saves.back());  // the final state too
  }
}

/// A compound field for the archive test.
struct Inner {
  std::vector<std::pair<int, double>> pairs{{1, 0.5}, {-3, 1e300}};
  std::optional<std::string> name = "a b";
  template <class Ar>
  void serialize(Ar& ar) { ar("pairs", pairs)("name", name); }
};

}  // namespace

TEST_CASE("A state archive round-trips every kind of field and refuses a reader that expects other fields",
          "[resume]") {
  Vector<float> v(3);
  v << 1.5f, -2.0f, 3.25f;
  StateWriter w(3);
  const std::uint64_t big = ~std::uint64_t(0);
  w("flag", true)("count", std::int64_t(-7))("big", big)("x", 0.1)("f", 2.5f)("text", std::string("h\0i", 3));
  w.parameters("v", v);
  w("inner", Inner{})("bools", std::vector<bool>{true, false, true});
  const std::string bytes = w.bytes();

  bool flag = false;
  std::int64_t count = 0;
  std::uint64_t big_back = 0;
  double x = 0;
  float f = 0;
  std::string text;
  Vector<float> v_back;
  Inner inner;
  inner.pairs.clear();
  inner.name = "other";
  std::vector<bool> bools;
  StateReader r(bytes, "test", 3);
  r("flag", flag)("count", count)("big", big_back)("x", x)("f", f)("text", text);
  r.parameters("v", v_back);
  r("inner", inner)("bools", bools);
  r.finish();
  CHECK(flag);
  CHECK(count == -7);
  CHECK(big_back == big);
  CHECK(x == 0.1);
  CHECK(f == 2.5f);
  CHECK(text == std::string("h\0i", 3));
  CHECK(test::same_vector(v_back, v));
  CHECK(inner.pairs == Inner{}.pairs);
  CHECK(inner.name == std::optional<std::string>("a b"));
  CHECK(bools == std::vector<bool>{true, false, true});

  // Another order, type or name is refused with the record that differs.
  StateReader wrong_name(bytes, "test", 3);
  CHECK_THROWS_WITH(wrong_name("flags", flag), Contains("record 0") && Contains("expected 'flags'") &&
                                                   Contains("got 'flag'"));
  StateReader wrong_type(bytes, "test", 3);
  wrong_type("flag", flag);
  CHECK_THROWS_WITH(wrong_type("count", x), Contains("'count' (float64, 0 dims)") && Contains("(int64, 0 dims)"));
  // A parameter vector of the wrong size for the model it is restored into.
  StateReader wrong_size(bytes, "test", 4);
  wrong_size("flag", flag)("count", count)("big", big_back)("x", x)("f", f)("text", text);
  CHECK_THROWS_WITH(wrong_size.parameters("v", v_back), Contains("expected 4 values") && Contains("got 3"));
  // Unread records: the file holds more than this reader knows.
  StateReader partial(bytes, "test", 3);
  partial("flag", flag);
  CHECK_THROWS_WITH(partial.finish(), Contains("the next one is 'count'"));
  // An integer that does not fit its field.
  StateReader narrow(bytes, "test", 3);
  narrow("flag", flag);
  std::uint8_t small = 0;
  CHECK_THROWS_WITH(narrow("count", small), Contains("-7 is out of range"));
  // A damaged file fails its checksum; a truncated one says so.
  std::string damaged = bytes;
  damaged[damaged.size() / 2] ^= 0x10;
  CHECK_THROWS_WITH(StateReader(damaged, "test"), Contains("checksum mismatch") || Contains("truncated"));
  CHECK_THROWS_WITH(StateReader(bytes.substr(0, bytes.size() - 9), "test"), Contains("truncated"));
  // A model file is not a state file.
  std::ostringstream model_file;
  save_parameters(model_file, v);
  CHECK_THROWS_WITH(StateReader(model_file.str(), "test"), Contains("wrong content") && Contains("expected state"));
}

TEST_CASE("save_state_file replaces the target atomically and leaves no temporary file", "[resume]") {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("fedmoe_resume_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "state").string();
  save_state_file(path, "first");
  std::vector<SavePhase> phases;
  save_state_file(path, std::string(1000, 'x'), [&](SavePhase p) {
    phases.push_back(p);
    if (p != SavePhase::renamed) CHECK(read_state_file(path) == "first");  // the old file until the rename
  });
  CHECK(phases == std::vector<SavePhase>{SavePhase::half_written, SavePhase::synced, SavePhase::renamed});
  CHECK(read_state_file(path) == std::string(1000, 'x'));
  CHECK(!std::filesystem::exists(path + ".tmp"));
  CHECK_THROWS_WITH(save_state_file((dir / "missing" / "state").string(), "x"), Contains("cannot create"));
  CHECK_THROWS_WITH(read_state_file((dir / "none").string()), Contains("no such file"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("A federation resumed from any saved state ends bitwise as the uninterrupted run", "[resume]") {
  const Blobs b(10);
  const LocalUpdateConfig local{1, 10};

  SECTION("server Adam (optimizer state), coordinate median, early stopping that stops the run") {
    // Concrete types here (fedmoe-paper's AnyAggregator / AnyOptimizer are resumed by tests/resume/).
    FederationConfig cfg = resume_config(40, 2);
    const auto make = [&] {
      return Strategy<UniformSampler, LocalTraining<Adam<float>>, CoordinateMedian, Adam<float>>{
          UniformSampler(4), LocalTraining<Adam<float>>(local, Adam<float>(1e-2)), CoordinateMedian{},
          Adam<float>(3e-2)};
    };
    check_exact_resume(b, cfg, make);
    CHECK(run(b, cfg, make, nullptr).result.rounds < 40);  // early stopping did stop it: the resumed runs had to know
  }
  SECTION("SCAFFOLD (server and client control variates) with attackers and failures") {
    FederationConfig cfg = resume_config(10);
    cfg.attack = AttackConfig{AttackKind::sign_flip, 0.2, 1.0, 1.0, 0.2};
    check_exact_resume(b, cfg, [&] {
      return Strategy<UniformSampler, Scaffold<float>, WeightedMean, Sgd<float>>{
          UniformSampler(5), Scaffold<float>(5e-2, local), WeightedMean{}, Sgd<float>(1)};
    });
  }
  SECTION("Ditto (every client's personal model)") {
    check_exact_resume(b, resume_config(9), [&] {
      return Strategy<UniformSampler, Ditto<Adam<float>>, WeightedMean, Sgd<float>>{
          UniformSampler(4), Ditto<Adam<float>>(DittoConfig{0.1, local, local, 2}, Adam<float>(1e-2)), WeightedMean{},
          Sgd<float>(1)};
    });
  }
  SECTION("DP-FedAvg with adaptive clipping and an epsilon budget that stops the run") {
    FederationConfig cfg = resume_config(30);
    cfg.select_on_validation = false;
    cfg.privacy.epsilon_budget = 40;
    check_exact_resume(b, cfg, [&] {
      return Strategy<PoissonSampler, LocalTraining<Adam<float>>, DpMean, Sgd<float>>{
          PoissonSampler(0.5), LocalTraining<Adam<float>>(local, Adam<float>(1e-2)),
          DpMean(DpMeanConfig{0.5, 0.8, AdaptiveClipping{0.5, 0.2, 1.0}}), Sgd<float>(1)};
    });
  }
}

TEST_CASE("A saved federation state is refused by another run, with what differs", "[resume]") {
  const Blobs b(10);
  const LocalUpdateConfig local{1, 10};
  auto fedavg_strategy = [&] {
    return Strategy<UniformSampler, LocalTraining<Adam<float>>, WeightedMean, Sgd<float>>{
        UniformSampler(4), LocalTraining<Adam<float>>(local, Adam<float>(1e-2)), WeightedMean{}, Sgd<float>(1)};
  };
  auto scaffold_strategy = [&] {
    return Strategy<UniformSampler, Scaffold<float>, WeightedMean, Sgd<float>>{
        UniformSampler(4), Scaffold<float>(5e-2, local), WeightedMean{}, Sgd<float>(1)};
  };
  std::vector<std::string> saves;
  (void)run(b, resume_config(6), fedavg_strategy, &saves);
  REQUIRE(!saves.empty());
  const std::string& state = saves.front();

  FederationConfig other_seed = resume_config(6);
  other_seed.seed = 9;
  CHECK_THROWS_WITH(run(b, other_seed, fedavg_strategy, nullptr, state),
                    Contains("another run") && Contains("seed 8, this run has 9"));
  CHECK_THROWS_WITH(run(b, resume_config(7), fedavg_strategy, nullptr, state), Contains("max_rounds 6, this run has 7"));
  CHECK_THROWS_WITH(run(b, resume_config(6), scaffold_strategy, nullptr, state), Contains("expected 'algorithm.control'"));
  const Blobs more(11);
  CHECK_THROWS_WITH(run(more, resume_config(6), fedavg_strategy, nullptr, state), Contains("client count 10, this run has 11"));
  std::string damaged = state;
  damaged[damaged.size() - 20] ^= 1;
  CHECK_THROWS_WITH(run(b, resume_config(6), fedavg_strategy, nullptr, damaged), Contains("checksum mismatch"));
  // Checkpointing without a save function is refused before any round.
  FederationConfig no_save = resume_config(6);
  no_save.checkpoint.every = 2;
  auto strategy = fedavg_strategy();
  Mlp<float> model = b.model();
  InProcessTransport<float> transport;
  CHECK_THROWS_WITH(train_federated(model, b.clients, transport, no_save, strategy),
                    Contains("checkpoint.every is 2") && Contains("no checkpoint.save"));
}
