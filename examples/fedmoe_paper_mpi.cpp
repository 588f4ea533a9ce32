// fedmoe-paper-mpi: fedmoe-paper across MPI processes (mpirun -np N, N >= 2). Rank 0 is the
// server, clients are spread over ranks 1..N-1 (client k on rank 1 + k mod (N-1)). Same flags as
// fedmoe-paper; its --json "results", "groups" and "federation" (apart from "seconds") are
// bitwise those of the single-process run with the same seed. Only rank 0 prints and writes files.
#include <fedmoe/distributed/mpi.hpp>

#include "paper_experiment.hpp"

int main(int argc, char** argv) {
  using namespace fedmoe_paper;
  fedmoe::MpiSession mpi(argc, argv);
  const int rank = fedmoe::MpiSession::rank();
  Options o;
  CLI::App app{"fedmoe-paper-mpi: fedmoe-paper over MPI (mpirun -np N fedmoe-paper-mpi ...; N >= 2)"};
  add_options(app, o);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (rank == 0) return app.exit(e);
    return e.get_exit_code();
  }
  apply_full(o);
  if (fedmoe::MpiSession::size() < 2) {
    if (rank == 0)
      std::cerr << "fedmoe-paper-mpi: expected at least 2 processes (rank 0 is the server, the others host the "
                << "clients), got 1: run it with mpirun -np N fedmoe-paper-mpi ..., N >= 2\n";
    return 2;
  }
  try {
    Runtime mpi;
    mpi.root = rank == 0;
    mpi.checkpoints = false;  // each process holds only its own clients' states
    mpi.make_transport = [] {
      return fedmoe::AnyTransport<float>(std::in_place_type<fedmoe::MpiTransport<float>>, MPI_COMM_WORLD);
    };
    mpi.json_timing = [](nlohmann::json& timing) { timing["processes"] = fedmoe::MpiSession::size(); };
    return run_experiment(mpi, o);
  } catch (const std::exception& e) {
    // The other ranks wait in a collective: report and end them all.
    std::cerr << "fedmoe-paper-mpi: error on rank " << rank << ": " << e.what() << "\n";
    fedmoe::MpiSession::abort(1);
  }
}
