// fedmoe-paper: the experiment of Listo Zec et al., "Specialized federated learning using a
// mixture of experts" (arXiv 2010.02056), on real Fashion-MNIST (or any MNIST-format / .npy data),
// in one process. The experiment itself lives in paper_experiment.hpp / .cpp, shared with
// fedmoe-paper-mpi (the same flags and results across MPI processes).
#include "paper_experiment.hpp"

int main(int argc, char** argv) {
  using namespace fedmoe_paper;
  Options o;
  CLI::App app{"fedmoe-paper: specialized federated learning with a mixture of experts (Listo Zec et al. 2020)"};
  add_options(app, o);
  CLI11_PARSE(app, argc, argv);
  apply_full(o);
  try {
    return run_experiment(Runtime{}, o);
  } catch (const std::exception& e) {
    std::string msg = e.what();  // most messages already name the program
    if (msg.rfind("fedmoe-paper: ", 0) == 0) msg.erase(0, 14);
    std::cerr << "fedmoe-paper: error: " << msg << "\n";
    return 1;
  }
}
