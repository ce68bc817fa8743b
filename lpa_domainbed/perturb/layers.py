"""Perturbation layers ("cuts") chosen by name.

A cut is a module whose output ``a`` is replaced by ``a + delta`` (paper eq. 2). Names are
dotted module paths relative to the algorithm (``featurizer.network.layer3``), a unique suffix
of one (``layer3``), or the aliases:

* ``features``: the featurizer output (the penultimate layer, input of the classifier);
* ``logits``: the classifier output (LPA there is LPL, paper 3.4.2);
* ``default``: the network's default cut (below);
* ``stage<k>`` (1-based), ``all_stages`` and ``early_stages`` (all but the last): the
  network's declared stages, for methods placed by stage (MixStyle, DSU);
* ``network_input``: the raw network input ``x`` itself (the featurizer's input), e.g. for
  Manifold Mixup's original layer set ``{input, block 1, block 2}``.

Where a network applies its nonlinearity functionally after a module (DomainBed's MLP:
``Linear -> dropout -> F.relu``), the activation ``a^(l)`` of eq. 1 is the *input of the next
module*, not the Linear's output; :attr:`Stages.inputs` maps such layer names to that next
module, and the cut replaces its input (a forward pre-hook) instead of a module's output.

Like timm's ``feature_info``, each DomainBed featurizer declares its stages
(:data:`NETWORK_STAGES`). They give the default cut and the depth ``L - l`` used by the
layer scaling ``gamma_l = beta ** (L - l)`` (paper eq. 15): ``L - l`` is the number of stages
after the one holding the cut, the classifier counting as the last stage. So for ResNet-50,
``layer3`` has ``L - l = 2`` (``layer4``, classifier), ``features`` 1 and ``logits`` 0.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

import torch.nn as nn

__all__ = ["Cut", "NETWORK_STAGES", "Stages", "resolve_cuts", "valid_layer_names",
           "network_stages"]

ALIASES = ("default", "features", "logits", "all_stages", "early_stages", "network_input")
NETWORK_INPUT = "network_input"


@dataclasses.dataclass(frozen=True)
class Stages:
    """A featurizer's stages (module paths relative to the algorithm, in execution order),
    its default cut, and ``inputs``: layer name -> path of the module whose *input* is that
    layer's activation (for layers followed by a functional nonlinearity)."""

    names: tuple[str, ...]
    default: str
    inputs: tuple[tuple[str, str], ...] = ()


def _resnet(featurizer) -> Stages:
    names = tuple(f"featurizer.network.layer{i}" for i in range(1, 5))
    return Stages(names, "featurizer.network.layer3")  # paper 4.1: output of stage 3


def _mnist_cnn(featurizer) -> Stages:
    # Conv block k is conv_k -> relu -> bn_{k-1} (GroupNorm); its output is the bn module's.
    return Stages(("featurizer.bn0", "featurizer.bn1", "featurizer.bn2", "featurizer.bn3"),
                  "featurizer.bn2")  # third conv block, the analogue of ResNet's stage 3


def _wide_resnet(featurizer) -> Stages:
    # WRN-16-2 has three stages; the paper perturbs "the corresponding layer in WRN-28-10"
    # to ResNet-110's stage-3 output, i.e. the output of the last stage.
    return Stages(("featurizer.layer1", "featurizer.layer2", "featurizer.layer3"),
                  "featurizer.layer3")


def _mlp(featurizer) -> Stages:
    hidden = [f"featurizer.hiddens.{i}" for i in range(len(featurizer.hiddens))]
    names = ("featurizer.input", *hidden, "featurizer.output")
    # forward(): input -> dropout -> F.relu -> hiddens[0] -> dropout -> F.relu -> ... -> output.
    # a^(l) (eq. 1, after the nonlinearity) of input and hiddens.i is the next Linear's input.
    inputs = tuple(zip(names[:-1], names[1:]))
    # The last hidden layer: like ResNet's layer3, two stages (output, classifier) follow it.
    return Stages(names, names[-2], inputs)


def _stage_table() -> dict[type, Callable[[nn.Module], Stages]]:
    from domainbed import networks
    from domainbed.lib import wide_resnet

    return {networks.ResNet: _resnet, networks.MNIST_CNN: _mnist_cnn,
            wide_resnet.Wide_ResNet: _wide_resnet, networks.MLP: _mlp}


#: featurizer class -> function returning its :class:`Stages`. Add an entry for a new network.
NETWORK_STAGES: dict[type, Callable[[nn.Module], Stages]] = {}


def network_stages(featurizer: nn.Module) -> Stages:
    if not NETWORK_STAGES:
        NETWORK_STAGES.update(_stage_table())
    for cls, describe in NETWORK_STAGES.items():
        if isinstance(featurizer, cls):
            return describe(featurizer)
    return Stages((), "features")  # unknown network: the penultimate layer is always there


@dataclasses.dataclass(frozen=True)
class Cut:
    """One perturbation layer.

    Attributes:
        name: canonical name relative to the algorithm (``featurizer.network.layer3``,
            ``features``, ``logits`` or ``network_input``).
        module: the module whose output is perturbed (whose input, with ``at_input``).
        depth: ``L - l``, the number of stages after the cut (0 at the logits).
        at_input: the activation is ``module``'s first positional input, not its output.
        is_logits: the cut is the network's output (its tail is the identity).
    """

    name: str
    module: nn.Module = dataclasses.field(compare=False, repr=False)
    depth: int
    at_input: bool = False
    is_logits: bool = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self):
        # a field, not a property: a tail evaluation reads it, and it never changes
        object.__setattr__(self, "is_logits", self.name == "logits")


def valid_layer_names(algorithm) -> list[str]:
    """Every name :func:`resolve_cuts` accepts for ``algorithm`` (aliases first)."""
    names = [f"featurizer.{n}" for n, _ in algorithm.featurizer.named_modules() if n]
    names += [f"classifier.{n}" for n, _ in algorithm.classifier.named_modules() if n]
    # Stages are module paths too: dict.fromkeys keeps the first of each, in order.
    return list(dict.fromkeys([*ALIASES, *network_stages(algorithm.featurizer).names, *names]))


def execution_order(featurizer: nn.Module, input_shape) -> list[str]:
    """Paths (``featurizer.``-prefixed) of the featurizer's modules in the order their
    ``forward`` finishes in one no-grad pass on a zero batch of 2 (eval mode, state-free)."""
    import torch

    order, handles = [], []
    for n, m in featurizer.named_modules():
        if n:
            handles.append(m.register_forward_hook(
                lambda *_, n=n: order.append(f"featurizer.{n}")))
    was_training = featurizer.training
    try:
        featurizer.eval()
        param = next(featurizer.parameters(), None)
        device = param.device if param is not None else "cpu"
        with torch.no_grad():
            featurizer(torch.zeros(2, *input_shape, device=device))
    finally:
        featurizer.train(was_training)
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def _depth(algorithm, name: str, stages: Stages) -> int:
    units = list(stages.names)
    if name == NETWORK_INPUT:
        return len(units) + 1
    if name == "logits" or name.startswith("classifier"):
        return 0
    if name == "features":
        return 1
    for i, stage in enumerate(units):
        if name == stage or name.startswith(stage + "."):
            return len(units) - i  # stages after this one, plus the classifier
    if not units:
        return 1
    # Outside every declared stage (MNIST_CNN's convolutions, a stem, pooling): the depth of
    # the first stage that finishes after it *in execution order* (registration order differs,
    # e.g. MNIST_CNN registers all convolutions before its norm layers); after the last: 1.
    order = execution_order(algorithm.featurizer, algorithm.input_shape)
    if name not in order:
        raise ValueError(f"perturb_layer {name!r} is never called in the featurizer's forward "
                         f"pass, so it cannot be perturbed")
    for i, stage in enumerate(units):
        if order.index(stage) > order.index(name):
            return len(units) - i
    return 1


def _canonical(algorithm, name: str, stages: Stages, valid: list[str]) -> str:
    if name == "default":
        name = stages.default
    if name in ("features", "featurizer"):
        return "features"
    if name in ("logits", "classifier"):
        return "logits"
    if name in valid:
        return name
    suffix = [v for v in valid if v.endswith("." + name)]
    if len(suffix) == 1:
        return suffix[0]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    if len(suffix) > 1:
        raise ValueError(f"perturb_layer {name!r} is ambiguous: it matches {suffix}. "
                         f"Use the full dotted path.")
    raise ValueError(
        f"perturb_layer {name!r} is not a layer of this network "
        f"({type(algorithm.featurizer).__name__}).{hint} Valid names: {', '.join(valid)}. "
        f"They are the aliases, the network's stages, and the dotted paths of "
        f"[n for n, _ in algorithm.featurizer.named_modules()] prefixed with 'featurizer.'.")


def _expand_stage_alias(name, stages: Stages) -> list:
    if name == "all_stages":
        return list(stages.names) or ["features"]
    if name == "early_stages":
        return list(stages.names[:-1]) or ["features"]
    if isinstance(name, str) and name.startswith("stage") and name[5:].isdigit():
        k = int(name[5:])
        if not 1 <= k <= len(stages.names):
            raise ValueError(f"perturb_layer {name!r}: this network has {len(stages.names)} "
                             f"stages ({', '.join(stages.names) or 'none declared'})")
        return [stages.names[k - 1]]
    return [name]


def resolve_cuts(algorithm, names) -> list[Cut]:
    """Turn the ``perturb_layer`` hparam (a name, a comma-separated string or a list of names)
    into :class:`Cut` objects, in the order given. Raises ``ValueError`` for an unknown name."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise ValueError("perturb_layer is empty: give a layer name, e.g. 'default'")
    stages = network_stages(algorithm.featurizer)
    names = [n for raw in names for n in _expand_stage_alias(raw, stages)]
    valid = valid_layer_names(algorithm)
    modules = {"features": algorithm.featurizer, "logits": algorithm.classifier}
    modules.update((n, m) for n, m in algorithm.named_modules() if n)
    inputs = dict(stages.inputs)
    inputs[NETWORK_INPUT] = "featurizer"
    cuts = []
    for raw in names:
        if not isinstance(raw, str):
            raise ValueError(f"perturb_layer entries must be strings, got {raw!r}")
        name = _canonical(algorithm, raw, stages, valid)
        if any(c.name == name for c in cuts):
            raise ValueError(f"perturb_layer lists {name!r} twice")
        if name in inputs:
            cuts.append(Cut(name, modules[inputs[name]], _depth(algorithm, name, stages),
                            at_input=True))
        else:
            cuts.append(Cut(name, modules[name], _depth(algorithm, name, stages)))
    return cuts
