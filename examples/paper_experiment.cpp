// The paper experiment's entry point, compiled once: fedmoe-paper, fedmoe-paper-mpi and the tests link
// this object (target fedmoe_paper_core) instead of each instantiating the whole experiment (every model,
// strategy, aggregator and personalisation method; about four minutes of compile each).
#include "paper_experiment.hpp"

namespace fedmoe_paper {

int run_experiment(const Runtime& runtime, const Options& o) {
  validate_options(o);
  if (runtime.is_root()) check_outputs(o);  // the outputs can be created and gnuplot runs, before any work
  if (o.dataset != "npy" && !std::filesystem::exists(o.data)) {
    if (runtime.is_root() && is_cifar(o))
      std::cerr << "fedmoe-paper: data directory '" << o.data << "' not found. CIFAR is not packaged for Debian: "
                << "download the binary version (" << cifar_tarball(o) << ") from "
                << "https://www.cs.toronto.edu/~kriz/cifar.html, extract it and pass --data DIR (its "
                << cifar_subdir(o) << " directory, or the one holding it).\n";
    else if (runtime.is_root())
      std::cerr << "fedmoe-paper: data directory '" << o.data << "' not found. Fashion-MNIST ships as the Debian "
                << "package dataset-fashion-mnist: apt-get install dataset-fashion-mnist (installs "
                << fashion_mnist_dir << "), or pass --data DIR.\n";
    return 2;
  }
  // --checkpoint / --resume: the directory is checked (and a checkpoint read and compared) before any work.
  std::optional<SweepCheckpoint> checkpoint;
  if (!o.checkpoint.empty() || !o.resume.empty()) {
    if (runtime.checkpoints)
      checkpoint.emplace(o.resume.empty() ? o.checkpoint : o.resume, !o.resume.empty(), result_flags(o), o.clients);
    else
      FEDMOE_FAIL("fedmoe-paper-mpi: --checkpoint and --resume are not supported over MPI (each process holds only ",
                  "its own clients' states); run fedmoe-paper for a resumable sweep");
  }
  SweepCheckpoint* ck = checkpoint ? &*checkpoint : nullptr;
  const auto start = Clock::now();
  ExperimentData data = load_data(o);
  check_model_shape(o, data.train);
  // The model is the one built for the data's sample shape, with the dataset's classes: a model's input
  // shape must be the data's, not only its size (the MLP's first Dense layer flattens the images).
  const Shape shape = data.train.shape;
  const Index classes = data.train.classes;
  if (o.model == "cnn" && shape == cifar_shape)
    return run(runtime, o, cifar_cnn<float>(classes), cifar_cnn_gate<float>(), std::move(data), start, ck);
  if (o.model == "cnn")
    return run(runtime, o, fashion_cnn<float>(classes, o.dropout), fashion_cnn_gate<float>(o.dropout),
               std::move(data), start, ck);
  return run(runtime, o, mlp<float>(shape, classes, 200, o.dropout), mlp_gate<float>(shape, 200, o.dropout),
             std::move(data), start, ck);
}


}  // namespace fedmoe_paper
