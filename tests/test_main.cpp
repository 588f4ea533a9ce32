// The one Catch2 runner of fedmoe's tests. Catch2 prints the seed of its random order
// (--order rand --rng-seed N); fedmoe tests draw their own data from fixed fedmoe::Rng seeds.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
