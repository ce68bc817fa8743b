"""The activation-perturbation machinery: choosing layers by name, and evaluating the rest
of the network from a cut without recomputing what comes before it."""

from lpa_domainbed.perturb.layers import Cut, NETWORK_STAGES, resolve_cuts, valid_layer_names
from lpa_domainbed.perturb.tail import CutForward

__all__ = ["Cut", "CutForward", "NETWORK_STAGES", "resolve_cuts", "valid_layer_names"]
