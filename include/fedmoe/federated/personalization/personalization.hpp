#pragma once
/// @file personalization.hpp
/// @brief The personalised-FL baselines as client algorithms (local_training.hpp's concept), each with
/// `personal_parameters` for a client's final personal model (common.hpp):
/// - apfl.hpp: APFL (Deng et al. 2020), a personal model mixed with the global copy by a learned alpha;
/// - ditto.hpp: Ditto (Li et al. 2021), a personal model on loss + lambda/2 |v - w|^2;
/// - partial_sharing.hpp: FedPer (Arivazhagan et al. 2019), FedRep (Collins et al. 2021) and
///   LG-FedAvg (Liang et al. 2020): a personal range of the parameter vector, never aggregated.
#include "apfl.hpp"
#include "common.hpp"
#include "ditto.hpp"
#include "partial_sharing.hpp"
