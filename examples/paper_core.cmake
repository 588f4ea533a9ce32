# fedmoe_paper_core: the paper experiment's run_experiment (examples/paper_experiment.cpp), compiled once and
# linked by fedmoe-paper, fedmoe-paper-mpi and the tests of its flags (tests/test_reliability_flags*.cpp).
# Each used to instantiate the whole experiment itself (every model, strategy, aggregator and personalisation
# method: about four minutes of compile apiece). Included by the top-level CMakeLists.txt when the examples or
# the tests are built. Its definitions are PUBLIC: every file that includes paper_experiment.hpp must see the
# same ones (the header's inline functions must be the same everywhere they are linked together).
find_package(CLI11 REQUIRED)
find_package(nlohmann_json 3 REQUIRED)  # Debian: nlohmann-json3-dev (the paper run's JSON output)
add_library(fedmoe_paper_core STATIC ${CMAKE_CURRENT_LIST_DIR}/paper_experiment.cpp)
target_link_libraries(fedmoe_paper_core PUBLIC fedmoe::fedmoe fedmoe_dev_options CLI11::CLI11
                      nlohmann_json::nlohmann_json Threads::Threads)

# fedmoe-paper's checkpoints name the fedmoe version and the commit the build was configured from, and
# refuse to resume another's (paper_checkpoint.hpp).
execute_process(COMMAND git -C ${PROJECT_SOURCE_DIR} rev-parse --short=12 HEAD OUTPUT_VARIABLE FEDMOE_GIT_COMMIT
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE FEDMOE_GIT_RESULT)
if(NOT FEDMOE_GIT_RESULT EQUAL 0 OR FEDMOE_GIT_COMMIT STREQUAL "")
  set(FEDMOE_GIT_COMMIT "not a git checkout")
endif()
target_compile_definitions(fedmoe_paper_core PUBLIC "FEDMOE_PAPER_VERSION=\"${PROJECT_VERSION} (${FEDMOE_GIT_COMMIT})\"")

# Secure aggregation in fedmoe-paper needs libsodium (pkg-config), optional like MPI.
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(SODIUM QUIET IMPORTED_TARGET libsodium)
endif()
if(SODIUM_FOUND)
  target_link_libraries(fedmoe_paper_core PUBLIC PkgConfig::SODIUM)
  target_compile_definitions(fedmoe_paper_core PUBLIC FEDMOE_PAPER_SECURE_AGGREGATION=1)
else()
  message(STATUS "fedmoe examples: libsodium not found (pkg-config libsodium): fedmoe-paper --secure-aggregation is refused")
endif()
