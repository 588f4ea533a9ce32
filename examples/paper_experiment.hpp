#pragma once
// The paper experiment of fedmoe-paper and fedmoe-paper-mpi (Listo Zec et al., "Specialized
// federated learning using a mixture of experts", arXiv 2010.02056). A Runtime (below) supplies the
// transport: one process (fedmoe-paper) or MPI (fedmoe-paper-mpi). Both binaries take the same flags
// (add_options) and run the same compiled code (run_experiment, defined once in paper_experiment.cpp,
// which both programs and the tests link), so the results of an MPI run are bitwise those of the
// in-process run with the same seed.
//
// For each opt-out fraction and each majority fraction p: partition the data over the clients,
// train the global model with FedAvg (opted-out clients never send anything), then personalise
// every client (specialist, fine-tuned, mixture of experts) and evaluate every client on its
// local test set and on the global test set. Prints the paper-style table; --json / --csv / --plot.
//
// Nothing runs before everything that can be checked is: every flag's value (for_each_flag lists each
// flag once with its accepted values, for the command line and for validate_options), the combinations
// of flags for every setting of the sweep, the output files (they can be created; gnuplot runs), and,
// once the data is loaded, the model's input shape and every setting's partition. A failed output
// (a full disk, /dev/full, a gnuplot error) is an error: the program exits non-zero and no half-written
// file is left under the name given (output_file.hpp).
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <iostream>
#include <limits>
#include <mutex>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <fedmoe/data/partition.hpp>
#include <fedmoe/federated/aggregators/any_aggregator.hpp>
#include <fedmoe/federated/any_transport.hpp>
#include <fedmoe/federated/federation.hpp>
#include <fedmoe/federated/server_optimizer.hpp>
#include <fedmoe/federated/personalize.hpp>
#include <fedmoe/federated/personalization/personalization.hpp>
#include <fedmoe/io/cifar.hpp>
#include <fedmoe/io/idx.hpp>
#include <fedmoe/io/npy.hpp>
#include <fedmoe/models/paper.hpp>

#include "flag_checks.hpp"
#include "output_file.hpp"
#include "paper_checkpoint.hpp"

// Secure aggregation needs libsodium: examples/CMakeLists.txt defines FEDMOE_PAPER_SECURE_AGGREGATION
// when pkg-config finds it; without, --secure-aggregation is refused before any work.
#if FEDMOE_PAPER_SECURE_AGGREGATION
#include <fedmoe/federated/secure/secure_transport.hpp>
#endif

namespace fedmoe_paper {

using namespace fedmoe;
using Clock = std::chrono::steady_clock;

/// Where the sweep runs. A value, not a template parameter, so that run_experiment is compiled once for
/// both programs: the default is one process (fedmoe-paper: an InProcessTransport, every client local);
/// fedmoe-paper-mpi sets an MpiTransport, root on rank 0 only and no checkpoints.
struct Runtime {
  bool root = true;         ///< this process prints and writes the outputs
  bool checkpoints = true;  ///< --checkpoint / --resume are supported (paper_checkpoint.hpp)
  /// A fresh transport per federation.
  std::function<AnyTransport<float>()> make_transport = [] {
    return AnyTransport<float>(std::in_place_type<InProcessTransport<float>>);
  };
  /// Extra fields of the JSON "timing" object.
  std::function<void(nlohmann::json&)> json_timing = [](nlohmann::json&) {};
  bool is_root() const { return root; }
};

/// --data's default: where Debian's dataset-fashion-mnist package installs Fashion-MNIST.
inline const std::string fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";

struct Options {
  std::string data = fashion_mnist_dir;
  std::string dataset = "fashion-mnist";  // fashion-mnist | idx | npy | cifar10 | cifar100
  std::string cifar100_labels = "fine";   // fine | coarse (--dataset cifar100)
  std::string model = "cnn";              // cnn | mlp
  Index clients = 20;
  Index n_train = 100, n_val = 200, n_test = 200;  // n_val 0: no validation, no early stopping
  std::string partition = "majority";  // majority | dirichlet | iid
  double alpha = 0.5;
  std::vector<double> p{0.5, 0.8, 1.0};
  std::vector<double> opt_out{0.5};
  Index clients_per_round = 5;
  double client_fraction = 0;  // if > 0, overrides clients_per_round
  int rounds = 100;
  int check_every = 20;
  int patience = 5;
  int local_epochs = 3;
  Index batch = 10;
  double lr_fedavg = 1e-3, lr_specialist = 1e-3, lr_finetune = 1e-4, lr_gate = 1e-3, lr_expert = 0;
  int max_epochs = 500, epoch_check = 5, epoch_patience = 10;
  std::string expert_init = "finetuned";
  Index global_test = 2000;  // 0: the full test split
  std::uint64_t seed = 1;
  std::size_t threads = 2;
  double dropout = 0.5;
  std::string json, csv, plot, gate_plot;
  std::string checkpoint, resume;  // paper_checkpoint.hpp
  int checkpoint_every = 10;       // rounds between a federation's saves
  bool full = false;
  // Federated strategy (federated/federation.hpp): server optimizer or client algorithm, aggregator, attacks.
  std::string strategy = "fedavg";  // fedavg | fedavgm | fedadagrad | fedadam | fedyogi | fedprox | scaffold
  double server_lr = 0;             // 0: the strategy's default (see server_lr_for)
  double server_momentum = 0.9, beta1 = 0.9, beta2 = 0.99, tau = 1e-3;
  std::string local_optimizer = "adam";  // adam | sgd: the participants' optimizer (FedAvg, FedAvgM, ..., FedProx)
  double prox_mu = 0.01;       // FedProx's mu (Li et al. 2020 try {0.001, 0.01, 0.1, 1})
  double scaffold_lr = 0.05;   // SCAFFOLD's local SGD learning rate
  std::string aggregator = "mean";
  double trim_fraction = 0.1;
  Index byzantine_bound = 0, multi_krum_m = 0;
  double clip_update_norm = 0;
  std::string attack = "none";
  double attackers = 0, attack_scale = 4, attack_noise = 1, client_failure = 0;
  std::vector<std::string> methods{"global", "specialist", "finetuned", "mixture", "mixture-prior"};
  double gate_split = 0.5;  // held-out gates: the fraction of the validation data they train on
  // Client-level differential privacy (DP-FedAvg, federated/privacy/dp_mean.hpp): on with --dp-noise.
  double dp_clip = 0, dp_noise = 0, dp_delta = 1e-5;
  double dp_adaptive_quantile = -1;  // -1: fixed clipping
  double dp_count_noise = 0;         // adaptive clipping's sigma_b; 0: the paper's m / 20
  double dp_epsilon_budget = 0;      // 0: no budget
  // Secure aggregation (federated/secure/secure_transport.hpp): on with --secure-aggregation.
  bool secure_aggregation = false;
  Index secagg_threshold = 0;  // 0: floor(m / 2) + 1, m = clients per round
  double secagg_bound = 1e3;   // B: the largest |n_k delta_k,i| a client may encode
};

/// Secure aggregation's threshold t for m clients per round: --secagg-threshold, or floor(m / 2) + 1.
inline Index secagg_threshold_for(const Options& o, Index m) {
  return o.secagg_threshold > 0 ? o.secagg_threshold : m / 2 + 1;
}


inline const std::vector<std::string> strategy_names{"fedavg", "fedavgm", "fedadagrad", "fedadam",
                                                     "fedyogi", "fedprox", "scaffold"};

/// The server learning rate: --server-lr, or the strategy's default: 1 for FedAvg, FedProx and SCAFFOLD
/// (x + Delta), 0.1 for FedAvgM (with momentum 0.9 an effective rate of 1, Hsu et al. 2019), 1e-2 for
/// the adaptive ones (Reddi et al. 2021 tune eta in 10^[-3, 1]; 1e-2 is among their best for CNNs).
inline double server_lr_for(const Options& o) {
  if (o.server_lr > 0) return o.server_lr;
  if (o.strategy == "fedavgm") return 0.1;
  if (o.strategy == "fedadagrad" || o.strategy == "fedadam" || o.strategy == "fedyogi") return 1e-2;
  return 1.0;
}

inline ServerOptimizerSpec server_spec(const Options& o) {
  ServerOptimizerSpec s;
  const bool plain = o.strategy == "fedprox" || o.strategy == "scaffold";
  s.name = plain ? "fedavg" : o.strategy;
  s.lr = server_lr_for(o);
  s.momentum = o.server_momentum;
  s.beta1 = o.beta1;
  s.beta2 = o.beta2;
  s.tau = o.tau;
  return s;
}

inline AggregatorSpec aggregator_spec(const Options& o) {
  AggregatorSpec a;
  a.name = o.aggregator;
  a.trim_fraction = o.trim_fraction;
  a.byzantine_bound = o.byzantine_bound;
  a.multi_krum_m = o.multi_krum_m;
  a.clip_update_norm = o.clip_update_norm;
  return a;
}

inline AttackConfig attack_config(const Options& o) {
  AttackConfig a;
  a.kind = attack_from_string(o.attack);
  a.fraction = o.attackers;
  a.scale = o.attack_scale;
  a.noise_std = o.attack_noise;
  a.failure = o.client_failure;
  return a;
}

inline bool wants(const Options& o, const std::string& method) {
  return std::find(o.methods.begin(), o.methods.end(), method) != o.methods.end();
}
inline bool is_baseline(const std::string& name);
inline bool wants_personalisation(const Options& o) {
  return std::any_of(o.methods.begin(), o.methods.end(),
                     [](const std::string& m) { return m != "global" && !is_baseline(m); });
}
/// The personalised-FL baselines (federated/personalization/): each runs its own federation, from the same
/// initial model with the setting's sampler, aggregator and server optimizer, its client algorithm keeping
/// the client's personal part, then reports every client's personal model. Hyperparameters: the README.
inline constexpr PersonalMethod baseline_methods[] = {
    {"apfl", "APFL (Deng et al. 2020): personal model v and mixing weight alpha (from 0.5, learned), "
             "the personalised model alpha v + (1 - alpha) w"},
    {"ditto", "Ditto (Li et al. 2021): a personal model trained on loss + lambda/2 |v - w|^2, lambda 0.1"},
    {"fedper", "FedPer (Arivazhagan et al. 2019): shared base, the last two layers personal"},
    {"fedrep", "FedRep (Collins et al. 2021): shared representation, the last layer personal; each round 10 "
               "epochs on the head, then 1 on the body"},
    {"lg-fedavg", "LG-FedAvg (Liang et al. 2020): local representation, the last two layers shared"},
};
inline bool is_baseline(const std::string& name) {
  return std::any_of(std::begin(baseline_methods), std::end(baseline_methods),
                     [&](const PersonalMethod& m) { return name == m.name; });
}
/// Every method --methods accepts: federated/personalize.hpp's personal_methods, then the baselines.
template <class F>
void for_each_method(F&& f) {
  for (const PersonalMethod& m : personal_methods) f(m);
  for (const PersonalMethod& m : baseline_methods) f(m);
}
inline std::vector<std::string> method_choices() {
  std::vector<std::string> names;
  for_each_method([&](const PersonalMethod& m) { names.push_back(m.name); });
  return names;
}
/// --help's list of the methods, one line each.
inline std::string method_help() {
  std::string h = "methods to run and report (global alone skips personalisation):";
  for_each_method([&](const PersonalMethod& m) { h.append("\n  ").append(m.name).append(": ").append(m.description); });
  return h;
}
/// The methods personalize() runs (every --methods name but the baselines).
inline std::vector<std::string> personal_method_names(const Options& o) {
  std::vector<std::string> names;
  for (const std::string& m : o.methods)
    if (!is_baseline(m)) names.push_back(m);
  return names;
}

/// Opted-in clients of a setting: clients - round(opt_out x clients).
inline Index opted_in_clients(const Options& o, double opt_out) {
  return o.clients - Index(std::llround(opt_out * double(o.clients)));
}
/// Clients sampled per round in a setting: --client-fraction of the opted-in clients, or --clients-per-round.
inline Index per_round_clients(const Options& o, double opt_out) {
  const Index opted_in = opted_in_clients(o, opt_out);
  return o.client_fraction > 0 ? clients_for_fraction(o.client_fraction, opted_in) : o.clients_per_round;
}

inline bool dp_enabled(const Options& o) { return o.dp_noise > 0 || o.dp_clip > 0; }

/// DP's Poisson sampling rate q: --client-fraction, or clients-per-round / opted-in clients.
inline double dp_sampling_rate(const Options& o, double opt_out) {
  return o.client_fraction > 0 ? o.client_fraction
                               : double(o.clients_per_round) / double(std::max<Index>(1, opted_in_clients(o, opt_out)));
}

inline DpMeanConfig dp_config(const Options& o) {
  DpMeanConfig c;
  c.clip_norm = o.dp_clip;
  c.noise_multiplier = o.dp_noise;
  if (o.dp_adaptive_quantile >= 0) c.adaptive = AdaptiveClipping{o.dp_adaptive_quantile, 0.2, o.dp_count_noise};
  return c;
}

inline PrivacyAccounting privacy_accounting(const Options& o) {
  PrivacyAccounting a;
  a.delta = o.dp_delta;
  if (o.dp_epsilon_budget > 0) a.epsilon_budget = o.dp_epsilon_budget;
  return a;
}

/// The limits of the flags that count things (reasonable upper bounds, so that no product of them can
/// overflow before the data decides; check_against_data then holds them to the data):
/// clients (and per-round counts, Krum's f and m) at most 2^20, because train_federated's client ids
/// select random streams and must be < 2^20; per-client sample counts, --batch and --global-test at most
/// 2^31 - 1; rounds and epochs at most 2^31 - 1 (an int); threads at most 1024 (each holds copies of the
/// models). Seeds: any decimal integer in [0, 2^64 - 1] (a negative seed is refused, not wrapped).
inline constexpr Index max_clients = Index(1) << 20;
inline constexpr Index max_samples = std::numeric_limits<std::int32_t>::max();
inline constexpr int max_count = std::numeric_limits<int>::max();
inline constexpr std::size_t max_threads = 1024;

/// Every flag with a value, in --help order: `flag(name, field, accepted, help)` for each, where
/// `accepted` is a flags::Integer, flags::Real, flags::Choice or flags::Text. add_options registers
/// them with CLI11 (a bad value is refused while parsing) and validate_options checks the parsed or
/// programmatically set Options against the same list, so no flag is checked in one and not the other.
/// (--full, a switch, is not here.)
template <class O, class F>
void for_each_flag(O& o, F&& flag) {
  using namespace flags;
  const Integer<Index> clients{1, max_clients}, samples{1, max_samples}, some_samples{0, max_samples},
      up_to_clients{0, max_clients};
  const Integer<int> at_least_one{1, max_count}, any_count{0, max_count};
  const Real fraction{0, 1}, below_one{0, 0.99};
  flag("--data", o.data, Text{},
       "data directory: the IDX .gz files (default " + fashion_mnist_dir + ", Debian's dataset-fashion-mnist), "
       "train_x/train_y/test_x/test_y .npy (--dataset npy), or the extracted CIFAR binary version (--dataset "
       "cifar10 | cifar100, where --data is required: cifar-10-batches-bin or cifar-100-binary, or the directory "
       "holding it; get it from https://www.cs.toronto.edu/~kriz/cifar.html)");
  flag("--dataset", o.dataset, Choice{{"fashion-mnist", "idx", "npy", "cifar10", "cifar100"}},
       "fashion-mnist | idx (any MNIST-format IDX set of 28 x 28 images) | npy (1 x 28 x 28 samples, 10 classes) | "
       "cifar10 (3 x 32 x 32, 10 classes) | cifar100 (3 x 32 x 32, 100 fine or 20 coarse classes)");
  flag("--cifar100-labels", o.cifar100_labels, Choice{{"fine", "coarse"}},
       "--dataset cifar100's labels: fine (100 classes) | coarse (20 superclasses). coarse with another "
       "--dataset is refused (those files have no coarse labels)");
  flag("--model", o.model, Choice{{"cnn", "mlp"}},
       "cnn | mlp. cnn: the paper's Fashion-MNIST CNN for 1 x 28 x 28 images, its CIFAR CNN for 3 x 32 x 32 "
       "ones (chosen by the data's sample shape; any other shape is refused); mlp: in -> 200 -> classes, built for "
       "either shape. The classes are the dataset's");
  flag("--clients", o.clients, clients, "number of clients (at most 2^20)");
  flag("--train-per-client", o.n_train, samples, "training samples per client");
  flag("--val-per-client", o.n_val, some_samples,
       "validation samples per client. 0: no validation data, so no early stopping and no model selection: "
       "every one of --rounds rounds and --max-epochs local epochs runs and the last models are kept (the "
       "JSON's \"model_selection\" says so, with best_round and best_val_loss null)");
  flag("--test-per-client", o.n_test, samples, "local test samples per client");
  flag("--partition", o.partition, Choice{{"majority", "dirichlet", "iid"}}, "majority | dirichlet | iid");
  flag("--alpha", o.alpha, positive, "Dirichlet concentration (--partition dirichlet)");
  flag("--p", o.p, fraction, "list of majority fractions p (e.g. --p 0.2 0.5 1.0)");
  flag("--opt-out", o.opt_out, fraction, "list of opt-out fractions (clients that never send anything)");
  flag("--clients-per-round", o.clients_per_round, clients, "COUNT of opted-in clients sampled per FedAvg round");
  flag("--client-fraction", o.client_fraction, fraction,
       "FRACTION of opted-in clients sampled per round (overrides --clients-per-round; 0: off)");
  flag("--rounds", o.rounds, any_count, "cap on FedAvg rounds");
  flag("--round-check", o.check_every, at_least_one, "FedAvg validation every N rounds");
  flag("--round-patience", o.patience, at_least_one, "FedAvg early-stopping patience (checks)");
  flag("--local-epochs", o.local_epochs, at_least_one, "FedAvg local epochs");
  flag("--batch", o.batch, samples, "mini-batch size");
  flag("--lr-fedavg", o.lr_fedavg, positive, "learning rate of the participants' local optimizer");
  flag("--local-optimizer", o.local_optimizer, Choice{{"adam", "sgd"}},
       "the participants' optimizer: adam | sgd (SCAFFOLD always runs SGD at --scaffold-lr)");
  flag("--lr-specialist", o.lr_specialist, positive, "Adam learning rate of the specialist");
  flag("--lr-finetune", o.lr_finetune, positive, "Adam learning rate of fine-tuning");
  flag("--lr-gate", o.lr_gate, positive, "Adam learning rate of the mixture's gate");
  flag("--lr-expert", o.lr_expert, non_negative,
       "Adam learning rate of the mixture's specialist expert (0: --lr-finetune or --lr-specialist)");
  flag("--max-epochs", o.max_epochs, any_count, "cap on local epochs (specialist, fine-tuning, mixture)");
  flag("--epoch-check", o.epoch_check, at_least_one, "local validation every N epochs");
  flag("--epoch-patience", o.epoch_patience, at_least_one, "local early-stopping patience (checks)");
  flag("--expert-init", o.expert_init, Choice{{"finetuned", "scratch"}},
       "mixture's specialist expert starts from: finetuned | scratch");
  flag("--global-test", o.global_test, some_samples,
       "evaluate on a fixed seeded subset of N global test images (0: the full test split; at most its size)");
  flag("--dropout", o.dropout, Real{0, 0.95},
       "dropout probability of the models (the Fashion CNN's and the MLP's; the paper's CIFAR CNN has none)");
  flag("--seed", o.seed, Integer<std::uint64_t>{0, std::numeric_limits<std::uint64_t>::max()},
       "seed of every random choice: a decimal integer in [0, 2^64 - 1]");
  flag("--threads", o.threads, Integer<std::size_t>{1, max_threads},
       "worker threads (results are identical for any count)");
  flag("--json", o.json, Text{}, "write results as JSON (checked before the run: the file can be created)");
  flag("--csv", o.csv, Text{}, "write results as CSV (checked before the run)");
  flag("--checkpoint", o.checkpoint, Text{},
       "save the sweep's state in DIR (created if needed; it must not hold a checkpoint yet) as it runs: after "
       "every --checkpoint-every rounds of a federation, each client's personalisation, each setting. A run "
       "killed at any moment continues with --resume DIR and the same flags, with bitwise the same results");
  flag("--resume", o.resume, Text{},
       "continue the sweep checkpointed in DIR (written by --checkpoint DIR, with the same flags; any --threads), "
       "and keep checkpointing there; a complete sweep's outputs are rewritten without training");
  flag("--checkpoint-every", o.checkpoint_every, at_least_one,
       "with --checkpoint / --resume: rounds between a federation's saves (each saves the global model, the "
       "optimizer and client states)");
  flag("--gate-plot", o.gate_plot, Text{},
       "write the gate-value distributions of every mixture method: FILE.png or FILE.svg (as --plot)");
  flag("--plot", o.plot, Text{},
       "write a plot: FILE.png or FILE.svg. Needs gnuplot with the pngcairo / svg terminal (Debian: "
       "apt-get install gnuplot-nox); checked before the run");
  // Federated strategy.
  flag("--strategy", o.strategy, Choice{strategy_names},
       "fedavg | fedavgm | fedadagrad | fedadam | fedyogi (server optimizers, Reddi et al. 2021) | "
       "fedprox | scaffold (client algorithms)");
  flag("--server-lr", o.server_lr, non_negative,
       "server learning rate (0: 1 for fedavg/fedprox/scaffold, 0.1 for fedavgm, 1e-2 for the adaptive ones)");
  flag("--server-momentum", o.server_momentum, fraction, "FedAvgM's server momentum");
  flag("--beta1", o.beta1, fraction, "first-moment decay of fedadagrad/fedadam/fedyogi");
  flag("--beta2", o.beta2, fraction, "second-moment decay of fedadam/fedyogi");
  flag("--tau", o.tau, positive, "adaptivity tau of fedadagrad/fedadam/fedyogi");
  flag("--prox-mu", o.prox_mu, non_negative, "FedProx's proximal weight mu");
  flag("--scaffold-lr", o.scaffold_lr, positive, "SCAFFOLD's local SGD learning rate");
  flag("--aggregator", o.aggregator,
       Choice{{"mean", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "geometric-median"}},
       "mean | median | trimmed-mean | krum | multi-krum | bulyan | geometric-median");
  flag("--trim-fraction", o.trim_fraction, Real{0, 0.5}, "trimmed mean: fraction cut at each end per coordinate");
  flag("--byzantine-bound", o.byzantine_bound, up_to_clients,
       "f, the attackers Krum/Multi-Krum/Bulyan tolerate per round");
  flag("--multi-krum-m", o.multi_krum_m, up_to_clients, "Multi-Krum: updates averaged (0: n - f)");
  flag("--clip-update-norm", o.clip_update_norm, non_negative,
       "clip every update to this L2 norm before aggregating (norm bounding; 0: off)");
  flag("--attack", o.attack, Choice{{"none", "sign-flip", "scale", "noise", "label-flip", "alie"}},
       "simulated attack: none | sign-flip | scale | noise | label-flip | alie");
  flag("--attackers", o.attackers, below_one, "FRACTION of each round's sampled clients that attack");
  flag("--attack-scale", o.attack_scale, positive, "k of sign-flip (-k delta) and scale (k delta)");
  flag("--attack-noise", o.attack_noise, positive, "sigma of the noise attack");
  flag("--client-failure", o.client_failure, below_one, "probability that a sampled client fails to return");
  flag("--methods", o.methods, Choice{method_choices()}, method_help());
  flag("--gate-split", o.gate_split, Real{0, 1, true, true},
       "held-out mixtures (mixture-heldout, mixture-stacked*): the fraction of each client's validation data their "
       "gate trains on; the rest early-stops it");
  // Client-level differential privacy.
  flag("--dp-clip", o.dp_clip, non_negative,
       "DP-FedAvg: clip every update delta to L2 norm C (with --dp-noise; 0: off)");
  flag("--dp-noise", o.dp_noise, non_negative,
       "DP-FedAvg: noise multiplier z (noise std z C on the sum); turns on client-level DP with Poisson "
       "sampling at q = --client-fraction or clients-per-round / opted-in clients (0: off)");
  flag("--dp-delta", o.dp_delta, Real{0, 1, true, true}, "DP: the delta of the reported (epsilon, delta)");
  flag("--dp-adaptive-quantile", o.dp_adaptive_quantile, Real{0, 1, false, false, -1.0},
       "DP: adaptive clipping (Andrew et al. 2021) tracking this quantile of the update norms (-1: fixed clipping)");
  flag("--dp-count-noise", o.dp_count_noise, non_negative,
       "DP adaptive clipping: noise std sigma_b of the unclipped count (0: m / 20, m = expected clients per round; "
       "needs 2 sigma_b > z)");
  flag("--dp-epsilon-budget", o.dp_epsilon_budget, non_negative,
       "DP: stop before the round that would exceed epsilon (0: no budget)");
  flag("--secagg-threshold", o.secagg_threshold, up_to_clients,
       "secure aggregation: t, the shares that recover a secret; m/2 < t <= m for m clients per round "
       "(0: m/2 + 1); up to m - t clients may drop out after masking");
  flag("--secagg-bound", o.secagg_bound, positive,
       "secure aggregation: B, the largest |samples x delta| per coordinate a client encodes (a larger update "
       "declines, never clamped)");
}

inline bool is_cifar(const Options& o) { return o.dataset == "cifar10" || o.dataset == "cifar100"; }
inline const char* cifar_tarball(const Options& o) {
  return o.dataset == "cifar100" ? "cifar-100-binary.tar.gz" : "cifar-10-binary.tar.gz";
}
inline const char* cifar_subdir(const Options& o) {
  return o.dataset == "cifar100" ? "cifar-100-binary" : "cifar-10-batches-bin";
}

/// "png" or "svg", from --plot's extension (any case); any other name is refused before any work (it
/// used to get PNG data under whatever name was given).
inline std::string plot_format(const std::string& path, const char* flag = "--plot") {
  std::string ext = std::filesystem::path(path).extension().string();
  for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  FEDMOE_CHECK(ext == ".png" || ext == ".svg", "fedmoe-paper: ", flag,
               ": expected a file name ending in .png or .svg, got '", path, "'");
  return ext.substr(1);
}

/// Every check that needs no data, for every setting of the sweep, before any work starts: every flag's
/// value (for_each_flag), then the combinations.
inline void validate_options(const Options& o) {
  for_each_flag(o, [](const char* name, const auto& value, const auto& accepted, const std::string&) {
    flags::check("fedmoe-paper", name, accepted, value);
  });
  if (!o.plot.empty()) (void)plot_format(o.plot);
  if (!o.gate_plot.empty()) (void)plot_format(o.gate_plot, "--gate-plot");
  FEDMOE_CHECK(o.checkpoint.empty() || o.resume.empty(), "fedmoe-paper: expected --checkpoint DIR (a new run) or ",
               "--resume DIR (continue one, checkpointing there), got both: --checkpoint ", o.checkpoint,
               " --resume ", o.resume);
  if (is_cifar(o))
    FEDMOE_CHECK(o.data != fashion_mnist_dir, "fedmoe-paper: --dataset ", o.dataset, " needs --data DIR, the ",
                 "extracted ", cifar_tarball(o), " (its ", cifar_subdir(o), " directory, or the one holding it): CIFAR is ",
                 "not packaged for Debian; download the binary version from https://www.cs.toronto.edu/~kriz/cifar.html");
  FEDMOE_CHECK(o.cifar100_labels == "fine" || o.dataset == "cifar100", "fedmoe-paper: --cifar100-labels ",
               o.cifar100_labels, " needs --dataset cifar100 (the only data with coarse labels), got --dataset ",
               o.dataset);
  (void)make_server_optimizer<float>(server_spec(o));  // rejects impossible hyperparameters
  (void)make_aggregator(aggregator_spec(o));
  attack_config(o).validate();
  for (std::size_t i = 0; i < o.methods.size(); ++i) {
    FEDMOE_CHECK(std::find(o.methods.begin(), o.methods.begin() + std::ptrdiff_t(i), o.methods[i]) ==
                     o.methods.begin() + std::ptrdiff_t(i),
                 "fedmoe-paper: --methods: expected each method once, got '", o.methods[i], "' twice");
    if (is_baseline(o.methods[i])) {
      FEDMOE_CHECK(!dp_enabled(o) && !o.secure_aggregation && o.strategy != "fedprox" && o.strategy != "scaffold",
                   "fedmoe-paper: --methods ", o.methods[i], " runs its own federation with its own client algorithm: ",
                   "it cannot be combined with --dp-noise/--dp-clip, --secure-aggregation or --strategy fedprox/scaffold",
                   " (got --strategy ", o.strategy, dp_enabled(o) ? ", DP" : "",
                   o.secure_aggregation ? ", secure aggregation" : "", ")");
      continue;
    }
    const PersonalMethod* m = find_personal_method(o.methods[i]);
    FEDMOE_CHECK(m != nullptr, "fedmoe-paper: --methods: unknown method '", o.methods[i], "'");
    FEDMOE_CHECK(!m->held_out || o.n_val >= 2, "fedmoe-paper: --methods ", m->name, " trains its gate on validation ",
                 "data and early-stops it on more: expected --val-per-client >= 2, got ", o.n_val);
  }
  if (dp_enabled(o)) {
    FEDMOE_CHECK(o.dp_noise > 0 && o.dp_clip > 0, "fedmoe-paper: differential privacy needs both --dp-clip C > 0 and ",
                 "--dp-noise z > 0, got --dp-clip ", o.dp_clip, " and --dp-noise ", o.dp_noise);
    FEDMOE_CHECK(o.aggregator == "mean" && o.clip_update_norm == 0, "fedmoe-paper: --dp-noise needs --aggregator mean ",
                 "without --clip-update-norm (DP-FedAvg clips and noises the mean itself; a robust rule's sensitivity to ",
                 "one client is not the clipping norm, so the accountant would not hold), got --aggregator ",
                 o.aggregator, (o.clip_update_norm > 0 ? " with --clip-update-norm" : ""));
    FEDMOE_CHECK(o.strategy != "scaffold", "fedmoe-paper: --dp-noise cannot be combined with --strategy scaffold ",
                 "(its control variates would be released without noise)");
    privacy_accounting(o).validate();
    (void)DpMean(dp_config(o));
  }
  if (o.secure_aggregation) {
#if !FEDMOE_PAPER_SECURE_AGGREGATION
    FEDMOE_FAIL("fedmoe-paper: --secure-aggregation: this binary was built without libsodium (install ",
                "libsodium-dev and pkg-config, then reconfigure)");
#endif
    FEDMOE_CHECK(o.aggregator == "mean" && o.clip_update_norm == 0, "fedmoe-paper: --secure-aggregation needs ",
                 "--aggregator mean without --clip-update-norm (the server sees only the sum, a robust rule needs the ",
                 "individual updates), got --aggregator ", o.aggregator,
                 (o.clip_update_norm > 0 ? " with --clip-update-norm" : ""));
    FEDMOE_CHECK(!dp_enabled(o), "fedmoe-paper: --secure-aggregation cannot be combined with --dp-noise / --dp-clip ",
                 "(the server cannot clip a sum; distributed DP is not implemented)");
    FEDMOE_CHECK(o.strategy != "scaffold", "fedmoe-paper: --secure-aggregation cannot be combined with --strategy ",
                 "scaffold (its server state needs each client's control variate)");
    FEDMOE_CHECK(o.attack == "none" || o.attack == "label-flip", "fedmoe-paper: --secure-aggregation simulates only ",
                 "--attack none or label-flip (the other attacks rewrite individual updates, which the server no ",
                 "longer sees), got --attack ", o.attack);
  }
  for (double out : o.opt_out) {
    const Index opted_in = opted_in_clients(o, out);
    FEDMOE_CHECK(opted_in > 0, "fedmoe-paper: opt-out fraction ", out, " leaves no client in the federation (",
                 o.clients, " clients)");
    const Index m = per_round_clients(o, out);
    FEDMOE_CHECK(m <= opted_in, "fedmoe-paper: --clients-per-round ", m, " exceeds the ", opted_in,
                 " opted-in clients at opt-out ", out, "; expected at most ", opted_in);
    // The aggregator sees the clients that return: with --attackers and --client-failure the expected number.
    check_aggregator_feasible(aggregator_spec(o), m);
    if (o.secure_aggregation) {
      const Index t = secagg_threshold_for(o, m);
      FEDMOE_CHECK(m >= 2 && 2 * t > m && t <= m, "fedmoe-paper: --secagg-threshold: expected t with ", m,
                   "/2 < t <= ", m, " (the clients per round at opt-out ", out, "), got t = ", t,
                   m < 2 ? " (secure aggregation needs at least 2 clients per round)" : "");
    }
    if (dp_enabled(o)) {  // Poisson sampling at q; adaptive clipping's noise split must be possible
      const double q = dp_sampling_rate(o, out);
      FEDMOE_CHECK(q > 0 && q <= 1, "fedmoe-paper: the DP sampling rate q = ", q, " at opt-out ", out,
                   " is outside (0, 1]");
      DpMean(dp_config(o)).set_expected_clients(q * double(opted_in));
    }
  }
}


/// The output files named on the command line (--json, --csv, --plot).
inline std::vector<OutputFile> output_files(const Options& o) {
  std::vector<OutputFile> files;
  if (!o.json.empty()) files.emplace_back("--json", o.json);
  if (!o.csv.empty()) files.emplace_back("--csv", o.csv);
  if (!o.plot.empty()) files.emplace_back("--plot", o.plot);
  if (!o.gate_plot.empty()) files.emplace_back("--gate-plot", o.gate_plot);
  return files;
}

/// The checks of the environment, before any work (on the process that writes the outputs): every output
/// file can be created (OutputFile::check), no two outputs name the same file, and for --plot gnuplot
/// runs and has the terminal the extension asks for.
inline void check_outputs(const Options& o) {
  const std::vector<OutputFile> files = output_files(o);
  for (std::size_t i = 0; i < files.size(); ++i) {
    files[i].check();
    for (std::size_t j = 0; j < i; ++j) {
      std::error_code a, b;
      const auto pi = std::filesystem::weakly_canonical(files[i].target(), a);
      const auto pj = std::filesystem::weakly_canonical(files[j].target(), b);
      FEDMOE_CHECK(a || b || pi != pj, "fedmoe-paper: ", files[j].flag(), " and ", files[i].flag(),
                   " both name the file '", pi.string(), "'; expected different files");
    }
  }
  for (const auto& [flag, path] : {std::pair<const char*, const std::string&>{"--plot", o.plot}, {"--gate-plot", o.gate_plot}}) {
    if (path.empty()) continue;
    const std::string terminal = plot_format(path, flag) == "svg" ? "svg" : "pngcairo";
    run_gnuplot("set terminal " + terminal + "\n", -1,
                std::string("fedmoe-paper: ") + flag + " needs gnuplot with the " + terminal +
                    " terminal (checked before the run)", true);
  }
}

/// A setting's partition, seeded by the seed and p (so every setting of a sweep is reproducible on its own).
inline Partition make_partition(const Options& o, const Dataset<float>& train, const Dataset<float>& test, double p) {
  Rng prng = Rng::stream(o.seed, 1000 + std::uint64_t(std::llround(p * 1000)));
  const PartitionSpec spec{o.clients, o.n_train, o.n_val, o.n_test, p};
  if (o.partition == "majority") return partition_majority(train.labels, test.labels, train.classes, spec, prng);
  if (o.partition == "dirichlet")
    return partition_dirichlet(train.labels, test.labels, train.classes, spec, o.alpha, prng);
  return partition_iid(train.labels, test.labels, train.classes, spec, prng);
}

/// The checks that need the data, for every setting of the sweep, before the first one runs: the model
/// takes the data's samples (shapes, not sizes: a 14 x 56 image is not a 28 x 28 one), --global-test
/// fits the test split, and the data can supply every setting's partition (clients x samples per client,
/// and per class for each p).
inline void check_against_data(const Options& o, Shape model_shape, const Dataset<float>& train,
                               const Dataset<float>& test) {
  FEDMOE_CHECK(model_shape == train.shape && model_shape == test.shape, "fedmoe-paper: --model ", o.model,
               " takes samples of shape ", model_shape, ", the data in '", o.data, "' has training samples of shape ",
               train.shape, " and test samples of shape ", test.shape,
               (model_shape.size() == train.shape.size() ? " (the same number of values, in another shape)" : ""));
  FEDMOE_CHECK(o.global_test <= test.size(), "fedmoe-paper: --global-test: expected at most ", test.size(),
               " (the size of the test split; 0: all of it), got ", o.global_test);
  for (double p : o.p) (void)make_partition(o, train, test, p);  // throws naming what is missing, and p
}

/// How a setting's global model was chosen. FederationResult::best_round alone cannot tell: it is 0 both
/// when the initial model had the best validation loss and when nothing selected a model at all.
struct ModelSelection {
  bool on_validation = false;  ///< the model of the best validation loss (early stopping)
  int round = 0;               ///< the round whose global model was kept
  std::string how;             ///< said in the JSON ("model_selection") and on stderr
};

inline ModelSelection model_selection(const Options& o, const FederationResult& fed) {
  const bool finite = std::any_of(fed.val_history.begin(), fed.val_history.end(),
                                  [](const auto& check) { return std::isfinite(check.second); });
  if (dp_enabled(o))
    return {false, fed.rounds, "last round (differential privacy: validation losses are reported, not used)"};
  if (o.n_val == 0) return {false, fed.rounds, "last round (no validation data: --val-per-client 0)"};
  if (!finite) return {false, fed.rounds, "last round (no finite validation loss)"};
  return {true, fed.best_round, "best validation loss (early stopping)"};
}

/// How the personalised models (specialist, fine-tuned, mixture) were chosen.
inline std::string personalisation_selection(const Options& o) {
  return o.n_val > 0 ? "best validation loss (early stopping, per client and method)"
                     : "last epoch (no validation data: --val-per-client 0, every one of --max-epochs epochs runs)";
}

struct Stat {
  double mean = 0, std = 0;
  Index n = 0;
};
inline Stat stat_of(const std::vector<double>& v) {
  Stat s;
  s.n = Index(v.size());
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  for (double x : v) s.std += (x - s.mean) * (x - s.mean);
  s.std = std::sqrt(s.std / double(v.size()));
  return s;
}

struct Row {
  double p, opt_out;
  std::string method, group;  // group: all | opt_in | opt_out
  Stat local, global;
  std::vector<std::pair<std::string, double>> metrics;               // means over the clients
  std::vector<std::pair<std::string, std::vector<double>>> series;   // sums over the clients
  std::optional<double> metric(std::string_view name) const {
    for (const auto& [n, v] : metrics)
      if (n == name) return v;
    return std::nullopt;
  }
};

struct Setting {
  double p, opt_out;
  FederationResult fed;
  std::vector<ClientResult> clients;
  double seconds = 0;
  /// Where the time went (timing, not results): wall seconds of the federation's rounds and checks, the
  /// personalisation and each baseline; the personalisation's phases in seconds summed over the clients
  /// (CPU time across the threads); and how many clients reused a specialist trained in an earlier setting.
  PhaseTimes wall, personal;
  Index specialists_reused = 0;
  template <class Ar>
  void serialize(Ar& ar) {  // paper_checkpoint.hpp
    ar("p", p)("opt_out", opt_out)("fed", fed)("clients", clients)("seconds", seconds);
    ar("wall", wall.phases)("personal", personal.phases)("specialists_reused", specialists_reused);
  }
};

class Progress {
public:
  explicit Progress(bool enabled = true) : m_tty(enabled && isatty(fileno(stderr))), m_start(Clock::now()) {}
  void line(const std::string& what, double fraction) {
    if (!m_tty) return;
    const double elapsed = std::chrono::duration<double>(Clock::now() - m_start).count();
    std::ostringstream eta;
    if (fraction > 0.01) eta << " ETA " << int(elapsed / fraction - elapsed) << "s";
    std::fprintf(stderr, "\r\033[K%s (%.0f%%, %ds elapsed%s)", what.c_str(), 100 * fraction, int(elapsed),
                 eta.str().c_str());
    std::fflush(stderr);
  }
  void done() {
    if (m_tty) std::fprintf(stderr, "\r\033[K");
  }

private:
  bool m_tty;
  Clock::time_point m_start;
};

template <class M, class G>
Setting run_setting(const Runtime& runtime, const Options& o, const Dataset<float>& train, const Dataset<float>& test,
                    std::span<const Index> global_test, double p, double opt_out, M model, G gate, Progress& progress,
                    double done_before, double share, SweepCheckpoint* checkpoint = nullptr, std::size_t index = 0,
                    std::vector<TrainedSpecialist<float>>* specialists = nullptr) {
  const auto start = Clock::now();
  Setting s{p, opt_out, {}, {}, 0, {}, {}, 0};
  // With --checkpoint / --resume: how far this setting got (a fresh one, or the saved one when resuming).
  SettingProgress* saved = checkpoint ? &checkpoint->begin_setting(index) : nullptr;
  Partition part = make_partition(o, train, test, p);
  // Opt-out set: a seeded choice of round(opt_out * clients) clients.
  std::vector<Index> order(std::size_t(o.clients));
  for (Index i = 0; i < o.clients; ++i) order[std::size_t(i)] = i;
  Rng orng = Rng::stream(o.seed, 2000 + std::uint64_t(std::llround(opt_out * 1000)));
  orng.shuffle(order.begin(), order.end());
  const Index n_out = Index(std::llround(opt_out * double(o.clients)));
  std::vector<bool> is_out(std::size_t(o.clients), false);
  for (Index i = 0; i < n_out; ++i) is_out[std::size_t(order[std::size_t(i)])] = true;
  std::vector<Client<float>> clients;
  for (Index i = 0; i < o.clients; ++i)
    clients.emplace_back(i, train, std::move(part.clients[std::size_t(i)]), is_out[std::size_t(i)]);

  // The federation: the strategy's client algorithm, aggregator and server optimizer in one loop.
  Rng irng = Rng::stream(o.seed, 3000);
  model.init(irng);
  const M initial = model;  // the personalised-FL baselines' federations start here too
  FederationConfig fc;
  fc.max_rounds = o.rounds;
  fc.check_every = o.check_every;
  fc.patience = o.patience;
  fc.threads = o.threads;
  fc.seed = o.seed;
  fc.attack = attack_config(o);
  if (dp_enabled(o)) {
    fc.select_on_validation = false;  // the guarantee covers the returned model: the last one, no early stop
    fc.privacy = privacy_accounting(o);
  }
  auto transport = runtime.make_transport();
  std::ostringstream label;
  label << "p=" << p << " opt-out=" << opt_out;
  const FederationProgress on_round = [&](int r, int max_r, double val) {
    std::ostringstream l;
    l << label.str() << ": " << o.strategy << " round " << r << "/" << max_r << " val loss " << std::setprecision(4)
      << val;
    progress.line(l.str(), done_before + share * (wants_personalisation(o) ? 0.4 : 1.0) * r / std::max(1, max_r));
  };
  auto federate_over = [&](auto& tr, auto algorithm) {
    Strategy<UniformSampler, decltype(algorithm), AnyAggregator, AnyOptimizer<float>> strategy{
        UniformSampler(per_round_clients(o, opt_out)), std::move(algorithm), make_aggregator(aggregator_spec(o)),
        make_server_optimizer<float>(server_spec(o))};
    return train_federated(model, clients, tr, fc, std::move(strategy), on_round);
  };
  auto federate = [&](auto algorithm) {
#if FEDMOE_PAPER_SECURE_AGGREGATION
    if (o.secure_aggregation) {
      SecureAggregationConfig sc;
      sc.max_clients = std::uint32_t(per_round_clients(o, opt_out));
      sc.threshold = std::uint32_t(secagg_threshold_for(o, per_round_clients(o, opt_out)));
      sc.value_bound = o.secagg_bound;
      sc.threads = o.threads;
      SecureAggregationTransport<decltype(transport)> secure(transport, sc);
      return federate_over(secure, std::move(algorithm));
    }
#endif
    if (dp_enabled(o)) {
      Strategy<PoissonSampler, decltype(algorithm), DpMean, AnyOptimizer<float>> strategy{
          PoissonSampler(dp_sampling_rate(o, opt_out)), std::move(algorithm), DpMean(dp_config(o)),
          make_server_optimizer<float>(server_spec(o))};
      return train_federated(model, clients, transport, fc, std::move(strategy), on_round);
    }
    return federate_over(transport, std::move(algorithm));
  };
  const LocalUpdateConfig local{o.local_epochs, o.batch};
  const AnyOptimizer<float> local_opt = o.local_optimizer == "sgd" ? AnyOptimizer<float>(Sgd<float>(o.lr_fedavg))
                                                                   : AnyOptimizer<float>(Adam<float>(o.lr_fedavg));
  // A federation's checkpoints go into the setting's saved progress (`store` records the latest state).
  const auto checkpointed = [&](FederationConfig c, const std::string& resume, auto store) {
    if (!saved) return c;
    c.checkpoint.every = o.checkpoint_every;
    c.checkpoint.resume = resume;
    c.checkpoint.save = [checkpoint, store](int, bool, const std::string& state) {
      checkpoint->update([&](SettingProgress& sp) { store(sp, state); });
    };
    return c;
  };
  if (saved && saved->fed) {  // resumed after the main federation ended
    FEDMOE_CHECK(saved->global.size() == model.num_params(), "fedmoe-paper: --resume: the saved global model has ",
                 saved->global.size(), " parameters, expected ", model.num_params());
    s.fed = *saved->fed;
    model.parameters() = saved->global;
  } else {
    const FederationConfig main_fc = fc;
    fc = checkpointed(main_fc, saved ? saved->federation : std::string(),
                      [](SettingProgress& sp, const std::string& state) { sp.federation = state; });
    if (o.strategy == "fedprox") s.fed = federate(FedProx<AnyOptimizer<float>>(o.prox_mu, local, local_opt));
    else if (o.strategy == "scaffold") s.fed = federate(Scaffold<float>(o.scaffold_lr, local));
    else s.fed = federate(LocalTraining<AnyOptimizer<float>>(local, local_opt));
    fc = main_fc;  // the baselines' federations checkpoint on their own
    s.wall.add("federation_rounds", s.fed.round_seconds);
    s.wall.add("validation_checks", s.fed.check_seconds);
    if (saved)
      checkpoint->update([&](SettingProgress& sp) {
        sp.fed = s.fed;
        sp.global = model.parameters();
        sp.federation.clear();
      });
  }

  // Personalisation of every client hosted here, in parallel; results land in per-client slots
  // (in process: every client; over MPI: each rank its own, then the metrics go to rank 0).
  PersonalizeConfig pc;
  pc.fit = {o.max_epochs, o.epoch_check, o.epoch_patience, o.batch};
  pc.lr_specialist = o.lr_specialist;
  pc.lr_finetune = o.lr_finetune;
  pc.lr_gate = o.lr_gate;
  pc.lr_expert = o.lr_expert;
  pc.expert_init = o.expert_init == "scratch" ? ExpertInit::scratch : ExpertInit::finetuned;
  pc.gate_split = o.gate_split;
  pc.methods = personal_method_names(o);
  pc.seed = o.seed;
  const double global_acc = [&] {  // a scratch copy: its activation buffers are freed right away
    M global_copy = model;
    return evaluate(global_copy, test, global_test).accuracy;
  }();
  s.clients.resize(clients.size());
  if (saved) s.clients = saved->clients;  // the clients (and baselines) completed before
  std::vector<PersonalWorkspace<M, G>> workspaces(o.threads, PersonalWorkspace<M, G>(model, gate));
  std::atomic<int> finished{0};
  std::mutex progress_mutex;
  std::vector<PhaseTimes> client_times(clients.size());
  std::vector<char> reused(clients.size(), 0);
  auto personalisation_clock = Clock::now();
  std::vector<std::size_t> hosted;
  for (std::size_t i = 0; i < clients.size(); ++i)
    if (transport_owns(transport, clients[i].id())) hosted.push_back(i);
  const bool personalise = wants_personalisation(o);
  // Clients personalised before a resume (a copy: the workers' saves write the bit-packed original).
  const std::vector<char> personalised_before =
      saved ? std::vector<char>(saved->personalised.begin(), saved->personalised.end()) : std::vector<char>(clients.size(), 0);
  parallel_for(hosted.size(), o.threads, [&](std::size_t h, std::size_t w) {
    const std::size_t i = hosted[h];
    if (personalised_before[i]) {
      ++finished;
      return;
    }
    if (personalise) {
      TrainedSpecialist<float>* cached = specialists ? &(*specialists)[i] : nullptr;
      reused[i] = cached && cached->parameters.size() > 0;
      s.clients[i] = personalize(clients[i], model, workspaces[w], test, global_test, pc, global_acc, cached,
                                 &client_times[i]);
    } else {  // the global model alone: its local-test accuracy, nothing trained
      ClientResult& r = s.clients[i];
      r.client = clients[i].id();
      r.opted_out = clients[i].opted_out();
      r.add("global", evaluate(workspaces[w].finetuned = model, test, clients[i].split().test).accuracy, global_acc);
    }
    if (saved)
      checkpoint->update([&](SettingProgress& sp) {
        sp.clients[i] = s.clients[i];
        sp.personalised[i] = true;
      }, true);
    const int f = ++finished;
    std::lock_guard lock(progress_mutex);
    std::ostringstream l;
    l << label.str() << ": personalised " << f << "/" << clients.size() << " clients";
    progress.line(l.str(), done_before + share * (0.4 + 0.6 * f / double(hosted.size())));
  });

  fedmoe::detail::lap(&s.wall, "personalisation", personalisation_clock);
  for (std::size_t i = 0; i < clients.size(); ++i) {
    s.personal.add(client_times[i]);
    s.specialists_reused += reused[i];
  }

  // The personalised-FL baselines: each its own federation from the same initial model, with the setting's
  // sampler, aggregator and server optimizer; then every hosted client's personal model, evaluated.
  auto run_baseline = [&](const std::string& name, auto algorithm) {
    if (saved && std::find(saved->baselines_done.begin(), saved->baselines_done.end(), name) !=
                     saved->baselines_done.end())
      return;  // its results are in s.clients already
    auto baseline_clock = Clock::now();
    const FederationConfig bfc =
        checkpointed(fc, saved && saved->baseline == name ? saved->baseline_state : std::string(),
                     [name](SettingProgress& sp, const std::string& state) {
                       sp.baseline = name;
                       sp.baseline_state = state;
                     });
    M bmodel = initial;
    auto btransport = runtime.make_transport();
    std::vector<typename decltype(algorithm)::State> states;
    const FederationProgress on_b = [&](int r, int max_r, double val) {
      std::ostringstream l;
      l << label.str() << ": " << name << " round " << r << "/" << max_r << " val loss " << std::setprecision(4) << val;
      progress.line(l.str(), done_before + share * r / std::max(1, max_r));
    };
    Strategy<UniformSampler, decltype(algorithm), AnyAggregator, AnyOptimizer<float>> strategy{
        UniformSampler(per_round_clients(o, opt_out)), algorithm, make_aggregator(aggregator_spec(o)),
        make_server_optimizer<float>(server_spec(o))};
    (void)train_federated(bmodel, clients, btransport, bfc, strategy, states, on_b);
    states.resize(clients.size());
    parallel_for(hosted.size(), o.threads, [&](std::size_t h, std::size_t w) {
      const std::size_t i = hosted[h];
      Rng rng = Rng::stream(o.seed, fedmoe::detail::personal_stream_id(clients[i].id()));
      M& personal = workspaces[w].finetuned;
      personal.parameters() = algorithm.personal_parameters(personal, bmodel.parameters(), states[i],
                                                            fedmoe::detail::local_data_of(clients[i]), rng);
      const double local_acc = evaluate(personal, test, clients[i].split().test).accuracy;
      s.clients[i].add(name, local_acc, evaluate(personal, test, global_test).accuracy);
    });
    fedmoe::detail::lap(&s.wall, name, baseline_clock);
    if (saved)
      checkpoint->update([&](SettingProgress& sp) {
        sp.clients = s.clients;
        sp.baselines_done.push_back(name);
        sp.baseline.clear();
        sp.baseline_state.clear();
      });
  };
  for (const std::string& name : o.methods) {
    if (name == "apfl") run_baseline(name, Apfl<AnyOptimizer<float>>(ApflConfig{local, 0.5, 1e-2, 5}, local_opt));
    if (name == "ditto")
      run_baseline(name, Ditto<AnyOptimizer<float>>(DittoConfig{0.1, local, local, 5}, local_opt));
    if (name == "fedper") run_baseline(name, fedper(head_range(model, 2), local, local_opt));
    if (name == "fedrep") run_baseline(name, fedrep(head_range(model, 1), 10, 1, o.batch, local_opt));
    if (name == "lg-fedavg") run_baseline(name, lg_fedavg(body_range(model, 2), local, local_opt));
  }
  if constexpr (requires { transport.gather_results(s.clients); }) transport.gather_results(s.clients);
  s.seconds = saved ? checkpoint->setting_seconds() : std::chrono::duration<double>(Clock::now() - start).count();
  return s;
}

/// One line of where a setting's time went: "time: federation_rounds 2.1 s, validation_checks 0.3 s,
/// personalisation 4.0 s (summed over clients: specialist 2.2 s, ...; 20 specialists reused), ditto 1.1 s".
inline std::string timing_line(const Setting& s) {
  std::ostringstream l;
  l << std::fixed << std::setprecision(1) << "time:";
  const char* sep = " ";
  for (const auto& [name, seconds] : s.wall.phases) {
    l << sep << name << " " << seconds << " s";
    if (name == "personalisation" && !s.personal.phases.empty()) {
      l << " (summed over clients:";
      const char* inner = " ";
      for (const auto& [phase, t] : s.personal.phases) {
        l << inner << phase << " " << t << " s";
        inner = ", ";
      }
      l << "; " << s.specialists_reused << " specialists reused)";
    }
    sep = ", ";
  }
  return l.str();
}

/// The JSON `timing.settings` entry of a setting (see Setting::wall).
inline nlohmann::json setting_timing_json(const Setting& s) {
  nlohmann::json wall = nlohmann::json::object(), personal = nlohmann::json::object();
  for (const auto& [name, seconds] : s.wall.phases) wall[name] = seconds;
  for (const auto& [name, seconds] : s.personal.phases) personal[name] = seconds;
  return nlohmann::json{{"p", s.p},
                        {"opt_out", s.opt_out},
                        {"seconds", s.seconds},
                        {"wall_seconds", wall},
                        {"personalisation_seconds_summed_over_clients", personal},
                        {"specialists_reused", s.specialists_reused}};
}

/// Mean over clients of every finite value of a metric (NaN where no client has a finite one).
inline double mean_finite(const std::vector<double>& v) {
  double sum = 0;
  Index n = 0;
  for (double x : v)
    if (std::isfinite(x)) sum += x, ++n;
  return n ? sum / double(n) : std::numeric_limits<double>::quiet_NaN();
}

/// The rows of one setting: per group (all clients, opted in, opted out) and method (in --methods order),
/// the accuracies over clients (mean, std), the mean of every metric the method reports and the sum of
/// every series (histograms). Generic: a method or metric added to personalize() appears here unchanged.
inline std::vector<Row> summarise(const Options& o, const Setting& s) {
  std::vector<Row> rows;
  for (const char* group : {"all", "opt_in", "opt_out"}) {
    for (const std::string& method : o.methods) {
      std::vector<double> loc, glo;
      Row r{s.p, s.opt_out, method, group, {}, {}, {}, {}};
      std::vector<std::pair<std::string, std::vector<double>>> metrics;
      for (const auto& c : s.clients) {
        if ((std::string(group) == "opt_in" && c.opted_out) || (std::string(group) == "opt_out" && !c.opted_out))
          continue;
        const MethodResult* m = c.find(method);
        FEDMOE_CHECK(m != nullptr, "fedmoe-paper: client ", c.client, " has no result for method '", method, "'");
        loc.push_back(m->local_acc);
        glo.push_back(m->global_acc);
        for (const auto& [name, value] : m->metrics) {
          auto it = std::find_if(metrics.begin(), metrics.end(), [&](const auto& e) { return e.first == name; });
          if (it == metrics.end()) it = metrics.insert(metrics.end(), {name, {}});
          it->second.push_back(value);
        }
        for (const auto& [name, values] : m->series) {
          auto it = std::find_if(r.series.begin(), r.series.end(), [&](const auto& e) { return e.first == name; });
          if (it == r.series.end()) it = r.series.insert(r.series.end(), {name, std::vector<double>(values.size())});
          for (std::size_t k = 0; k < values.size() && k < it->second.size(); ++k) it->second[k] += values[k];
        }
      }
      if (loc.empty()) continue;
      r.local = stat_of(loc);
      r.global = stat_of(glo);
      for (const auto& [name, values] : metrics) r.metrics.emplace_back(name, mean_finite(values));
      rows.push_back(std::move(r));
    }
  }
  return rows;
}

inline void print_table(const std::vector<Row>& rows, std::ostream& out) {
  out << "\nAccuracy % over clients (mean +- std), local test / global test; group: all clients\n";
  out << std::left << std::setw(6) << "p" << std::setw(9) << "opt-out" << std::setw(18) << "method" << std::setw(18)
      << "local test" << std::setw(18) << "global test" << "mean gate (local/global), gate AUC\n";
  out << std::string(100, '-') << "\n";
  for (const auto& r : rows) {
    if (r.group != "all") continue;
    std::ostringstream l, g;
    l << std::fixed << std::setprecision(1) << 100 * r.local.mean << " +- " << 100 * r.local.std;
    g << std::fixed << std::setprecision(1) << 100 * r.global.mean << " +- " << 100 * r.global.std;
    out << std::left << std::setw(6) << r.p << std::setw(9) << r.opt_out << std::setw(18) << r.method << std::setw(18)
        << l.str() << std::setw(18) << g.str();
    const auto gl = r.metric("mean_gate_local"), gg = r.metric("mean_gate_global"), auc = r.metric("gate_auc");
    if (gl && gg) out << std::fixed << std::setprecision(2) << *gl << " / " << *gg;
    if (auc) out << ", " << std::fixed << std::setprecision(2) << *auc;
    out << std::defaultfloat << "\n";
  }
}

/// Every flag, as given (after --full), under the flag's own name with '-' as '_'.
inline nlohmann::json config_json(const Options& o) {
  using nlohmann::json;
  return json{{"data", o.data}, {"dataset", o.dataset}, {"cifar100_labels", o.cifar100_labels}, {"model", o.model}, {"clients", o.clients},
              {"n_train", o.n_train}, {"n_val", o.n_val}, {"n_test", o.n_test}, {"partition", o.partition},
              {"alpha", o.alpha}, {"p", o.p}, {"opt_out", o.opt_out}, {"clients_per_round", o.clients_per_round},
              {"client_fraction", o.client_fraction}, {"rounds", o.rounds}, {"check_every", o.check_every},
              {"patience", o.patience}, {"local_epochs", o.local_epochs}, {"batch", o.batch},
              {"lr_fedavg", o.lr_fedavg}, {"lr_specialist", o.lr_specialist}, {"lr_finetune", o.lr_finetune},
              {"lr_gate", o.lr_gate}, {"lr_expert", o.lr_expert}, {"max_epochs", o.max_epochs},
              {"epoch_check", o.epoch_check}, {"epoch_patience", o.epoch_patience}, {"expert_init", o.expert_init},
              {"global_test", o.global_test}, {"seed", o.seed}, {"threads", o.threads}, {"dropout", o.dropout},
              {"strategy", o.strategy}, {"server_lr", server_lr_for(o)}, {"server_momentum", o.server_momentum},
              {"beta1", o.beta1}, {"beta2", o.beta2}, {"tau", o.tau}, {"prox_mu", o.prox_mu},
              {"scaffold_lr", o.scaffold_lr}, {"local_optimizer", o.local_optimizer}, {"aggregator", o.aggregator},
              {"trim_fraction", o.trim_fraction},
              {"byzantine_bound", o.byzantine_bound}, {"multi_krum_m", o.multi_krum_m},
              {"clip_update_norm", o.clip_update_norm}, {"attack", o.attack}, {"attackers", o.attackers},
              {"attack_scale", o.attack_scale}, {"attack_noise", o.attack_noise},
              {"client_failure", o.client_failure}, {"methods", o.methods}, {"gate_split", o.gate_split},
              {"dp_clip", o.dp_clip},
              {"dp_noise", o.dp_noise}, {"dp_delta", o.dp_delta}, {"dp_adaptive_quantile", o.dp_adaptive_quantile},
              {"dp_count_noise", o.dp_count_noise},
              {"dp_epsilon_budget", o.dp_epsilon_budget}, {"secure_aggregation", o.secure_aggregation},
              {"secagg_threshold", o.secagg_threshold}, {"secagg_bound", o.secagg_bound}};
}

/// A setting's federation: rounds, how the model was selected (model_selection, model_round; best_round
/// and best_val_loss when early stopping chose it, else null), the validation losses of every check, and
/// per round what happened to the sampled clients (columns of equal length, one entry per round).
inline nlohmann::json federation_json(const Options& o, const Setting& s) {
  using nlohmann::json;
  json checks = json::array();
  for (const auto& [round, loss] : s.fed.val_history)  // a non-finite loss (no data, poisoned model) is null
    checks.push_back(json{{"round", round}, {"val_loss", std::isfinite(loss) ? json(loss) : json(nullptr)}});
  json rounds{{"round", json::array()},    {"sampled", json::array()},   {"failed", json::array()},
              {"attackers", json::array()}, {"received", json::array()}, {"rejected", json::array()},
              {"discarded", json::array()}, {"used", json::array()},     {"stepped", json::array()}};
  for (const RoundRecord& r : s.fed.history) {
    rounds["round"].push_back(r.round);
    rounds["sampled"].push_back(r.sampled);
    rounds["failed"].push_back(r.failed);
    rounds["attackers"].push_back(r.attackers);
    rounds["received"].push_back(r.received);
    rounds["rejected"].push_back(r.rejected);
    rounds["discarded"].push_back(r.discarded);
    rounds["used"].push_back(r.used);
    rounds["stepped"].push_back(r.stepped);
  }
  // best_round / best_val_loss only for a model selected on validation; else null, never a made-up 0.
  const ModelSelection selection = model_selection(o, s.fed);
  json doc{{"p", s.p},
           {"opt_out", s.opt_out},
           {"rounds", s.fed.rounds},
           {"model_selection", selection.how},
           {"model_round", selection.round},
           {"best_round", selection.on_validation ? json(s.fed.best_round) : json(nullptr)},
           {"best_val_loss", selection.on_validation ? json(s.fed.best_val_loss) : json(nullptr)},
           {"checks", checks},
           {"per_round", rounds},
           {"seconds", s.seconds}};
  // Every client's own results (the rows are means over these): each method's accuracies and metrics.
  json clients = json::array();
  for (const ClientResult& c : s.clients) {
    json methods = json::array();
    for (const MethodResult& m : c.methods) {
      json jm{{"method", m.method}, {"local_test_acc", m.local_acc}, {"global_test_acc", m.global_acc}};
      for (const auto& [name, value] : m.metrics) jm[name] = std::isfinite(value) ? json(value) : json(nullptr);
      methods.push_back(std::move(jm));
    }
    clients.push_back(json{{"client", c.client}, {"opted_out", c.opted_out}, {"methods", std::move(methods)}});
  }
  doc["clients"] = std::move(clients);
  if (const auto& dp = s.fed.privacy) {
    json eps = json::array(), clip = json::array();
    for (const RoundRecord& r : s.fed.history) {
      eps.push_back(r.epsilon);
      clip.push_back(std::isfinite(r.clip_norm) ? json(r.clip_norm) : json(nullptr));
    }
    doc["per_round"]["epsilon"] = eps;
    doc["per_round"]["clip_norm"] = clip;
    doc["dp"] = json{{"epsilon", dp->epsilon},
                     {"delta", dp->delta},
                     {"order", dp->order},
                     {"noise_multiplier", dp->noise_multiplier},
                     {"sampling_rate", dp->sampling_rate},
                     {"rounds", dp->rounds},
                     {"conversion", privacy::to_string(dp->conversion)},
                     {"budget_stop_round", dp->budget_stop_round > 0 ? json(dp->budget_stop_round) : json(nullptr)},
                     {"model", "last round (validation losses are reported, not used: they are not privatised)"}};
  }
  return doc;
}

inline nlohmann::json row_json(const Row& r) {
  nlohmann::json j{{"p", r.p},
                   {"opt_out", r.opt_out},
                   {"method", r.method},
                   {"local_test_acc", r.local.mean},
                   {"local_test_acc_std", r.local.std},
                   {"global_test_acc", r.global.mean},
                   {"global_test_acc_std", r.global.std},
                   {"clients", r.local.n}};
  if (r.group != "all") j["group"] = r.group;
  for (const auto& [name, value] : r.metrics) j[name] = std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
  for (const auto& [name, values] : r.series) j[name] = values;
  return j;
}

/// The --json document. `run_info` (run's data_json: "data" and "model") is copied in at the top level.
inline std::string json_text(const Runtime& runtime, const Options& o, const std::vector<Row>& rows,
                      const std::vector<Setting>& settings, double total_seconds, long peak_kib,
                      const nlohmann::json& run_info = nlohmann::json::object()) {
  using nlohmann::json;
  json results = json::array(), groups = json::array(), federation = json::array();
  for (const auto& r : rows) (r.group == "all" ? results : groups).push_back(row_json(r));
  for (const auto& s : settings) federation.push_back(federation_json(o, s));
  json timing{{"total_seconds", total_seconds}, {"peak_rss_mib", double(peak_kib) / 1024}, {"threads", o.threads}};
  json per_setting = json::array();
  for (const auto& s : settings) per_setting.push_back(setting_timing_json(s));
  timing["settings"] = std::move(per_setting);
  runtime.json_timing(timing);
  json doc{{"config", config_json(o)}, {"results", results}, {"groups", groups},
           {"federation", federation}, {"timing", timing}};
  for (const auto& [key, value] : run_info.items()) doc[key] = value;
  if (wants_personalisation(o))
    doc["personalisation"] = json{{"model_selection", personalisation_selection(o)}, {"max_epochs", o.max_epochs}};
  return doc.dump(2) + "\n";
}

/// The --csv table: one line per row, the accuracies, then a column for every metric any row has
/// (in the order first seen; empty where a row has none, or its value is not finite).
inline std::string csv_text(const std::vector<Row>& rows) {
  std::vector<std::string> names;
  for (const auto& r : rows)
    for (const auto& m : r.metrics)
      if (std::find(names.begin(), names.end(), m.first) == names.end()) names.push_back(m.first);
  std::ostringstream f;
  f << "p,opt_out,group,method,local_test_acc,local_test_acc_std,global_test_acc,global_test_acc_std,clients";
  for (const auto& n : names) f << ',' << n;
  f << "\n" << std::setprecision(10);
  for (const auto& r : rows) {
    f << r.p << ',' << r.opt_out << ',' << r.group << ',' << r.method << ',' << r.local.mean << ',' << r.local.std
      << ',' << r.global.mean << ',' << r.global.std << ',' << r.local.n;
    for (const auto& n : names) {
      f << ',';
      if (const auto v = r.metric(n); v && std::isfinite(*v)) f << *v;
    }
    f << "\n";
  }
  return f.str();
}

/// The gnuplot script of --plot: accuracy against p per method, local test (top row) and global test
/// (bottom row), one column per opt-out fraction, every number inline in data blocks ($d<panel>_<method
/// index>). It names no file at all: gnuplot writes the image to its standard output, which write_plot
/// points at the output's temporary file, so no string from the command line ever enters the script (a
/// quote in the file name once ran commands through gnuplot's `system`); the method names come from
/// personal_methods.
inline std::string plot_script(const Options& o, const std::vector<Row>& rows, const std::string& format) {
  const std::vector<double>& opt_outs = o.opt_out;
  std::ostringstream g;
  g << (format == "svg" ? "set terminal svg size " : "set terminal pngcairo size ") << 520 * opt_outs.size()
    << ",840\n";
  for (std::size_t k = 0; k < opt_outs.size(); ++k)
    for (std::size_t m = 0; m < o.methods.size(); ++m) {
      g << "$d" << k << "_" << m << " << EOD\n";
      for (const auto& r : rows)
        if (r.group == "all" && r.method == o.methods[m] && r.opt_out == opt_outs[k])
          g << r.p << ' ' << 100 * r.local.mean << ' ' << 100 * r.local.std << ' ' << 100 * r.global.mean << ' '
            << 100 * r.global.std << "\n";
      g << "EOD\n";
    }
  g << "set multiplot layout 2," << opt_outs.size() << "\n";
  g << "set xlabel 'majority fraction p'\nset key bottom left font ',8'\nset grid\n";
  for (const char* which : {"local", "global"}) {
    const int col = std::string(which) == "local" ? 2 : 4;
    g << "set ylabel '" << which << " test accuracy %'\n";
    for (std::size_t k = 0; k < opt_outs.size(); ++k) {
      g << "set title '" << which << " test, opt-out " << opt_outs[k] << "'\nplot ";
      for (std::size_t m = 0; m < o.methods.size(); ++m)
        g << (m ? ", " : "") << "$d" << k << "_" << m << " using 1:" << col << ":" << col + 1
          << " with yerrorlines title '" << o.methods[m] << "'";
      g << "\n";
    }
  }
  g << "unset multiplot\n";
  return g.str();
}

/// The gnuplot script of --gate-plot: for every setting (rows) and mixture method (columns), the
/// distribution of the gate's weight on the non-global experts over the global test inputs, pooled over
/// the clients: inputs of the client's majority classes against the other classes (fractions of each).
/// A gate that routes puts the first near 1 and the second near 0; a constant gate draws two equal curves.
inline std::string gate_plot_script(const std::vector<Row>& rows, const std::string& format) {
  std::vector<const Row*> mixtures;
  std::vector<std::string> methods;
  std::vector<std::pair<double, double>> settings;
  for (const auto& r : rows) {
    if (r.group != "all" || !r.metric("gate_auc")) continue;
    mixtures.push_back(&r);
    if (std::find(methods.begin(), methods.end(), r.method) == methods.end()) methods.push_back(r.method);
    if (std::find(settings.begin(), settings.end(), std::pair{r.p, r.opt_out}) == settings.end())
      settings.emplace_back(r.p, r.opt_out);
  }
  std::ostringstream g;
  g << (format == "svg" ? "set terminal svg size " : "set terminal pngcairo size ")
    << 360 * std::max<std::size_t>(1, methods.size()) << "," << 240 * std::max<std::size_t>(1, settings.size())
    << "\n";
  for (std::size_t i = 0; i < mixtures.size(); ++i) {
    const auto* maj = &mixtures[i]->series;
    std::vector<double> a, b;
    for (const auto& [name, v] : *maj) {
      if (name == "gate_hist_majority") a = v;
      if (name == "gate_hist_other") b = v;
    }
    double sa = 0, sb = 0;
    for (double v : a) sa += v;
    for (double v : b) sb += v;
    g << "$g" << i << " << EOD\n";
    for (std::size_t k = 0; k < a.size() && k < b.size(); ++k)
      g << (double(k) + 0.5) / double(a.size()) << ' ' << (sa > 0 ? a[k] / sa : 0) << ' ' << (sb > 0 ? b[k] / sb : 0)
        << "\n";
    g << "EOD\n";
  }
  g << "set multiplot layout " << std::max<std::size_t>(1, settings.size()) << ","
    << std::max<std::size_t>(1, methods.size()) << "\n";
  g << "set xrange [0:1]\nset yrange [0:*]\nset key top center font ',8'\nset grid\n"
    << "set xlabel 'weight on the non-global experts' font ',8'\n";
  if (mixtures.empty()) g << "set title 'no mixture method was run'\nplot 0 notitle\n";
  for (const auto& [p, out] : settings)
    for (const auto& method : methods) {
      std::size_t i = mixtures.size();
      for (std::size_t t = 0; t < mixtures.size(); ++t)
        if (mixtures[t]->p == p && mixtures[t]->opt_out == out && mixtures[t]->method == method) i = t;
      if (i == mixtures.size()) {
        g << "set multiplot next\n";
        continue;
      }
      g << "set title '" << method << ", p " << p << ", opt-out " << out << ", AUC " << std::fixed
        << std::setprecision(2) << mixtures[i]->metric("gate_auc").value_or(0) << std::defaultfloat
        << "' font ',9'\nplot $g" << i << " using 1:2 with steps title 'majority classes', $g" << i
        << " using 1:3 with steps title 'other classes'\n";
    }
  g << "unset multiplot\n";
  return g.str();
}

/// Accuracy against p per method, one panel per opt-out fraction, drawn by gnuplot (plot_script) straight
/// into `out` (written atomically: a gnuplot error leaves no file under the name given, and is an error).
inline void write_plot(const std::string& script, const OutputFile& out) {
  out.write_with([&](int fd) {
    run_gnuplot(script, fd, "fedmoe-paper: " + std::string(out.flag()) + " '" + out.path() + "'");
    struct stat st {};
    FEDMOE_CHECK(::fstat(fd, &st) == 0 && (!S_ISREG(st.st_mode) || st.st_size > 0), "fedmoe-paper: ", out.flag(),
                 " '", out.path(), "': gnuplot wrote nothing");
  });
}

/// Writes every output that was asked for (each one tried even when another failed); throws one
/// fedmoe::Error naming every failure.
inline void write_outputs(const Runtime& runtime, const Options& o, const std::vector<Row>& rows,
                   const std::vector<Setting>& settings, double total_seconds, long peak_kib,
                   const nlohmann::json& run_info = nlohmann::json::object()) {
  std::string failures;
  const auto attempt = [&](auto&& write) {
    try {
      write();
    } catch (const std::exception& e) {
      failures += (failures.empty() ? "" : "\n  ") + std::string(e.what());
    }
  };
  if (!o.json.empty())
    attempt([&] {
      OutputFile("--json", o.json).write(json_text(runtime, o, rows, settings, total_seconds, peak_kib, run_info));
    });
  if (!o.csv.empty()) attempt([&] { OutputFile("--csv", o.csv).write(csv_text(rows)); });
  if (!o.plot.empty())
    attempt([&] { write_plot(plot_script(o, rows, plot_format(o.plot)), OutputFile("--plot", o.plot)); });
  if (!o.gate_plot.empty())
    attempt([&] {
      write_plot(gate_plot_script(rows, plot_format(o.gate_plot, "--gate-plot")), OutputFile("--gate-plot", o.gate_plot));
    });
  FEDMOE_CHECK(failures.empty(), failures);
}

/// The training and test splits of a run, as loaded (pixels in [0, 1]).
struct ExperimentData {
  Dataset<float> train, test;
};

/// The sample shapes the paper's models are built for: the Fashion-MNIST CNN's and the CIFAR CNN's.
inline constexpr Shape fashion_shape{1, 28, 28};
inline constexpr Shape cifar_shape{3, 32, 32};

/// --dataset's splits from --data: .npy files hold 1 x 28 x 28 samples of 10 classes (the shape the loader
/// checks them against), CIFAR-10 10 classes, CIFAR-100 100 fine or 20 coarse ones.
inline ExperimentData load_data(const Options& o) {
  if (o.dataset == "npy") {
    const std::string d = o.data + "/";
    return {load_npy_dataset<float>(d + "train_x.npy", d + "train_y.npy", fashion_shape, 10),
            load_npy_dataset<float>(d + "test_x.npy", d + "test_y.npy", fashion_shape, 10)};
  }
  if (o.dataset == "cifar10") return {load_cifar10<float>(o.data, true), load_cifar10<float>(o.data, false)};
  if (o.dataset == "cifar100") {
    const Cifar100Labels labels = o.cifar100_labels == "coarse" ? Cifar100Labels::coarse : Cifar100Labels::fine;
    return {load_cifar100<float>(o.data, true, labels), load_cifar100<float>(o.data, false, labels)};
  }
  return {load_fashion_mnist<float>(o.data, true), load_fashion_mnist<float>(o.data, false)};
}

/// The data's sample shape is one --model is built for: 1 x 28 x 28 or 3 x 32 x 32 (checked on the training
/// split, which picks the model; check_against_data then holds the test split to the model).
inline void check_model_shape(const Options& o, const Dataset<float>& train) {
  const bool cnn = o.model == "cnn";
  FEDMOE_CHECK(train.shape == fashion_shape || train.shape == cifar_shape, "fedmoe-paper: --model ", o.model,
               " takes samples of shape ", fashion_shape, cnn ? " (the Fashion-MNIST CNN)" : "", " or ", cifar_shape,
               cnn ? " (the CIFAR CNN)" : "", ", the data in '", o.data, "' (--dataset ", o.dataset,
               ") has training samples of shape ", train.shape,
               (train.shape.size() == fashion_shape.size() || train.shape.size() == cifar_shape.size()
                    ? " (the same number of values, in another shape)"
                    : ""));
}

/// The JSON's "data" (what was loaded) and "model" (what --model built for it: the classifier and the gate).
template <class M, class G>
nlohmann::json data_json(const Options& o, const M& model, const G& gate, const Dataset<float>& train,
                         const Dataset<float>& test) {
  using nlohmann::json;
  const Shape in = model.input_shape();
  const char* name = o.model == "mlp" ? "mlp" : in == cifar_shape ? "cifar_cnn" : "fashion_cnn";
  return json{{"data", {{"train_samples", train.size()},
                        {"test_samples", test.size()},
                        {"sample_shape", {train.shape.channels, train.shape.height, train.shape.width}},
                        {"classes", train.classes}}},
              {"model", {{"name", name},
                         {"input_shape", {in.channels, in.height, in.width}},
                         {"classes", model.output_shape().size()},
                         {"parameters", model.parameters().size()},
                         {"gate_parameters", gate.parameters().size()}}}};
}

template <class M, class G>
int run(const Runtime& runtime, const Options& o, M model, G gate, ExperimentData data, Clock::time_point start,
        SweepCheckpoint* checkpoint = nullptr) {
  const bool root = runtime.is_root();
  Dataset<float>& train = data.train;
  Dataset<float>& test = data.test;
  check_against_data(o, model.input_shape(), train, test);  // every setting's, before the first runs
  // Normalise as torchvision's Normalize((0.5,), (0.5,)) in the reference code: [0,1] -> [-1,1].
  train.inputs.array() = train.inputs.array() * 2.0f - 1.0f;
  test.inputs.array() = test.inputs.array() * 2.0f - 1.0f;

  std::vector<Index> global_test(std::size_t(test.size()));
  for (Index i = 0; i < test.size(); ++i) global_test[std::size_t(i)] = i;
  if (o.global_test > 0 && o.global_test < test.size()) {
    Rng g = Rng::stream(o.seed, 4000);
    g.shuffle(global_test.begin(), global_test.end());
    global_test.resize(std::size_t(o.global_test));
    std::sort(global_test.begin(), global_test.end());
  }

  if (root)
    std::cerr << "fedmoe-paper: " << o.dataset << " (" << train.size() << " training samples of shape " << train.shape
              << ", " << train.classes << " classes), " << o.clients << " clients, " << o.model << ", p in {";
  if (root) for (double p : o.p) std::cerr << p << (p == o.p.back() ? "" : ",");
  if (root) std::cerr << "}, opt-out in {";
  if (root) for (double x : o.opt_out) std::cerr << x << (x == o.opt_out.back() ? "" : ",");
  if (root) std::cerr << "}, " << o.threads << " threads, global test " << global_test.size() << " images\n";
  if (root && o.n_val == 0)
    std::cerr << "fedmoe-paper: --val-per-client 0: no validation data, so no early stopping: every one of the "
              << o.rounds << " rounds" << (wants_personalisation(o) ? " and of the " + std::to_string(o.max_epochs) +
                                                                          " local epochs" : std::string())
              << " runs and the last models are kept\n";

  Progress progress(root);
  std::vector<Setting> settings;
  std::vector<Row> rows;
  const double share = 1.0 / double(o.p.size() * o.opt_out.size());
  // p outer: the settings of one p share every client's data, so each specialist is trained once per p
  // (in the first opt-out setting) and reused in the others (TrainedSpecialist).
  for (double p : o.p) {
    std::vector<TrainedSpecialist<float>> specialists(std::size_t(o.clients));
    for (double out : o.opt_out) {
      const double done = share * double(settings.size());
      const std::size_t index = settings.size();
      if (checkpoint && index < checkpoint->settings_done()) {
        settings.push_back(checkpoint->load_setting<Setting>(index, p, out));
      } else {
        settings.push_back(run_setting(runtime, o, train, test, global_test, p, out, model, gate, progress, done,
                                       share, checkpoint, index, &specialists));
        if (checkpoint) checkpoint->finish_setting(index, settings.back());
      }
      progress.done();
      const auto& s = settings.back();
      if (root) {
        const ModelSelection selection = model_selection(o, s.fed);
        std::cerr << "p=" << p << " opt-out=" << out << ": " << o.strategy << " " << s.fed.rounds << " rounds ("
                  << (selection.on_validation ? "best round " + std::to_string(selection.round) : selection.how)
                  << "), " << std::fixed << std::setprecision(1) << s.seconds << "s\n" << std::defaultfloat;
        std::cerr << "  " << timing_line(s) << "\n";
      }
      if (root && s.fed.privacy)
        std::cerr << "  DP: epsilon " << std::setprecision(4) << s.fed.privacy->epsilon << " at delta "
                  << s.fed.privacy->delta << " (q " << s.fed.privacy->sampling_rate << ", z "
                  << s.fed.privacy->noise_multiplier << ", " << s.fed.privacy->rounds << " rounds, "
                  << privacy::to_string(s.fed.privacy->conversion) << " conversion"
                  << (s.fed.privacy->budget_stop_round > 0 ? ", stopped by the budget" : "") << ")\n"
                  << std::defaultfloat;
      if (root)  // the other processes of an MPI run hold only their own clients' results
        for (auto& r : summarise(o, s)) rows.push_back(r);
    }
  }
  const double total = std::chrono::duration<double>(Clock::now() - start).count();
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  if (!root) return 0;
  print_table(rows, std::cout);
  std::cout << "\nexpert init: " << o.expert_init << "; wall time " << std::fixed << std::setprecision(1) << total
            << " s; peak memory " << double(ru.ru_maxrss) / 1024 << " MiB\n";
  std::cout.flush();
  write_outputs(runtime, o, rows, settings, total, ru.ru_maxrss, data_json(o, model, gate, train, test));
  FEDMOE_CHECK(std::cout.good(), "fedmoe-paper: writing the results table to standard output failed");
  return 0;
}


namespace detail {
template <class T>
inline constexpr bool is_list = false;
template <class T>
inline constexpr bool is_list<std::vector<T>> = true;
}  // namespace detail

/// The flags of fedmoe-paper (and fedmoe-paper-mpi, which takes exactly the same): for_each_flag's list,
/// each value checked while parsing (flag_checks.hpp), and --full.
inline void add_options(CLI::App& app, Options& o) {
  for_each_flag(o, [&](const char* name, auto& value, const auto& accepted, const std::string& help) {
    CLI::Option* opt = app.add_option(name, value, help);
    using Accepted = std::decay_t<decltype(accepted)>;
    if constexpr (std::is_same_v<Accepted, flags::Choice>) opt->check(CLI::IsMember(accepted.names));
    else if constexpr (!std::is_same_v<Accepted, flags::Text>) opt->transform(flags::validator(accepted));
    if constexpr (detail::is_list<std::decay_t<decltype(value)>>) opt->expected(1, -1);
  });
  app.add_flag("--secure-aggregation", o.secure_aggregation,
               "secure aggregation (Bonawitz et al. 2017): the server sees only the sum of the round's updates "
               "(needs libsodium; with --aggregator mean, no DP, no SCAFFOLD)");
  app.add_flag("--full", o.full,
               "the paper's protocol: 100 clients, p 0.2..1.0, opt-out 0/0.5/0.9, full global test, 1000-round cap");
}

/// Every flag that can change a result, by name, with its value (after --full): what a checkpoint must
/// agree on. Not: --threads (results are the same for any count), the outputs and the checkpoint flags.
inline nlohmann::json result_flags(const Options& o) {
  nlohmann::json flags = nlohmann::json::object();
  for_each_flag(o, [&](const char* name, const auto& value, const auto&, const std::string&) {
    const std::string n = name;
    for (const char* skip : {"--threads", "--json", "--csv", "--plot", "--gate-plot", "--checkpoint", "--resume",
                             "--checkpoint-every"})
      if (n == skip) return;
    flags[n] = value;
  });
  flags["--secure-aggregation"] = o.secure_aggregation;
  return flags;
}

/// --full: the paper's protocol.
inline void apply_full(Options& o) {
  if (!o.full) return;
  o.clients = 100;
  o.p = {0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0};
  o.opt_out = {0.0, 0.5, 0.9};
  o.global_test = 0;
  o.rounds = 1000;
  o.check_every = 40;
}

/// Loads the data, builds the models and runs the sweep. Returns the exit code (2: no data);
/// throws fedmoe::Error on bad input. Defined in paper_experiment.cpp (the whole experiment, every model,
/// strategy and method: compiled once, linked by fedmoe-paper, fedmoe-paper-mpi and the tests).
int run_experiment(const Runtime& runtime, const Options& o);

}  // namespace fedmoe_paper
