/// @file fuzz_state.cpp
/// @brief Fuzz target: a federation's saved state (io/archive.hpp, FederationCheckpoint) resumed and run to
/// its end, so a state that loads but leaves an inconsistent run (a client state, a moment or a best copy of
/// the wrong size, counters that disagree) is a finding too.
///
/// Input: one mode byte, then the state file. Mode bit 0 set: the last 4 bytes are replaced by the CRC-32
/// of the bytes before them, so mutations get past the checksum. Mode bit 1: the strategy it is resumed
/// into (small_net.hpp's run_small_federation: SCAFFOLD with a server Adam, or Ditto under DP-FedAvg).
#include <string>

#include "fuzz_target.hpp"
#include "small_net.hpp"

FEDMOE_FUZZ_TARGET {
  if (size < 1) return 0;
  const fedmoe::fuzz::ModeAndFile input = fedmoe::fuzz::mode_and_file(data, size);
  const unsigned mode = input.mode;
  const std::string& file = input.file;
  if (file.empty()) return 0;  // an empty resume state means "start afresh": not a parse
  return fedmoe::fuzz::expect_clean_error([&] { fedmoe::fuzz::run_small_federation(mode >> 1, nullptr, file); });
}
