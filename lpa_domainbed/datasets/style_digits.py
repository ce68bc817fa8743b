"""StyleDigits: the embedded style-shift dataset, PACS in miniature, on DomainBed's MNIST_CNN.

scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside its wheel, so
nothing is downloaded) are shuffled with a fixed seed, split into four disjoint domains, each
upsampled to 24x24 (bilinear) and padded to 28x28 like MNIST, and rendered in one of four
styles. The 3x28x28 input selects DomainBed's ``MNIST_CNN`` (four convolutions with
GroupNorm, spatial feature maps), i.e. the paper's setting: a convolutional network, a cut on
a feature map, normalization after the cut.

Why these domains. PACS's domains (photo, art painting, cartoon, sketch) keep the shape of the
object and change how it is rendered: stroke, colour, texture, background, line drawing versus
filled area. Each domain here changes several of these at once, as PACS's do, and never the
geometry (no rotation: that is RotatedDigits' shift):

* ``plain`` (photo): grey strokes of natural width, white on black, smooth shading.
* ``colour`` (cartoon): bold strokes (dilated) in one saturated random colour on a flat,
  darker random background colour of another hue.
* ``sketch`` (sketch): the outline of the stroke only (dilation minus erosion), light lines on
  dark noisy paper: the filled area is gone.
* ``texture`` (art painting): the stroke filled with an oriented stripe texture of random
  angle, period and colour, on a background of smooth coloured blobs.

Every domain keeps the ink brighter than its background. An earlier version inverted the
sketch domain's polarity (dark ink on light paper) and used light backgrounds: MNIST_CNN,
trained from scratch, then transferred nothing (held-out accuracy at chance on every domain),
so no algorithm could show a difference. ERM held out versus in-domain: docs/datasets.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from domainbed import datasets as db_datasets
from torch.utils.data import TensorDataset

from lpa_domainbed import hparams as hp
from lpa_domainbed.datasets import DATASETS
from lpa_domainbed.datasets.digits import check_train_args, load_digits

__all__ = ["StyleDigits", "render"]

_SHUFFLE_SEED = 0
_STYLE_SEED = 1
#: side of the upsampled digit, centred in 28x28 (MNIST_CNN's receptive field is 15 pixels)
DIGIT_SIZE = 16


def _dilate(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _erode(x: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-x, 3, stride=1, padding=1)


def _colours(rng: np.random.RandomState, n: int, saturation: float, value: float) -> torch.Tensor:
    """``[n, 3, 1, 1]`` RGB colours of random hue (HSV with the given saturation and value)."""
    h = rng.uniform(0, 6, n)
    c = value * saturation
    x = c * (1 - np.abs(h % 2 - 1))
    zero = np.zeros(n)
    sector = np.floor(h).astype(int) % 6
    table = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c), (c, zero, x)]
    rgb = np.stack([np.choose(sector, [t[k] * np.ones(n) for t in table]) for k in range(3)], 1)
    return torch.from_numpy(rgb + (value - c)).float().view(n, 3, 1, 1)


def render(strokes: torch.Tensor, style: str, seed: int) -> torch.Tensor:
    """Render grey strokes ``[n, 1, 28, 28]`` in [0, 1] in one style -> ``[n, 3, 28, 28]``.

    Deterministic for a given ``seed`` (the per-image colours, angles and noise).
    """
    n = strokes.shape[0]
    rng = np.random.RandomState(seed)
    if style == "plain":
        return strokes.expand(n, 3, 28, 28).clone()
    if style == "colour":
        ink = _dilate(strokes).clamp(0, 1)
        fg = _colours(rng, n, 1.0, 1.0)
        bg = _colours(rng, n, 0.6, 0.25)  # darker than the ink: the polarity of the others
        return ink * fg + (1 - ink) * bg
    if style == "sketch":
        outline = (_dilate(strokes) - _erode(strokes)).clamp(0, 1)
        paper = 0.25 * torch.from_numpy(rng.uniform(0, 1, (n, 1, 28, 28))).float()
        return (outline + (1 - outline) * paper).expand(n, 3, 28, 28).clone()
    if style == "texture":
        i, j = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        angle = torch.from_numpy(rng.uniform(0, np.pi, (n, 1, 1, 1))).float()
        period = torch.from_numpy(rng.uniform(3, 5, (n, 1, 1, 1))).float()
        stripes = 0.5 + 0.5 * torch.sin(2 * np.pi * (i * torch.cos(angle) + j * torch.sin(angle))
                                        / period)
        blobs = F.interpolate(torch.from_numpy(rng.uniform(0, 1, (n, 3, 4, 4))).float(),
                              size=(28, 28), mode="bicubic", align_corners=False).clamp(0, 1)
        ink = strokes.clamp(0, 1)
        fill = (0.4 + 0.6 * stripes) * _colours(rng, n, 0.9, 1.0)
        return (ink * fill + (1 - ink) * 0.3 * blobs).clamp(0, 1)
    raise ValueError(f"unknown style {style!r}; one of {StyleDigits.ENVIRONMENTS}")


@DATASETS.register("StyleDigits")
class StyleDigits(db_datasets.MultipleDomainDataset):
    """Four rendering styles of scikit-learn's digits (see module docs); deterministic, no
    download.

    Shapes: each environment is a ``TensorDataset`` of ``x [n, 3, 28, 28]`` (float32 in
    [0, 1]) and ``y [n]`` (int64 in 0..9), ``n`` = 449 or 450.
    """

    ENVIRONMENTS = ["plain", "colour", "sketch", "texture"]
    # A study of 720 runs must fit in minutes on one GPU and 16 cores: a run is 300 steps.
    N_STEPS = 300
    CHECKPOINT_FREQ = 100
    N_WORKERS = 0  # tensors in memory: worker processes only add start-up time
    INPUT_SHAPE = (3, 28, 28)

    #: dataset-specific hyperparameters, replacing DomainBed's ImageNet-scale defaults.
    HPARAMS = [
        hp.HParam("lr", 1e-3, hp.log_uniform(-3.3, -2.7), "Adam learning rate"),
        hp.HParam("batch_size", 32, lambda r: int(2 ** r.uniform(4, 6)), "per domain"),
        hp.HParam("weight_decay", 0.0, hp.fixed(0.0)),
    ]

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        check_train_args("StyleDigits", self.ENVIRONMENTS, test_envs)
        images, labels = load_digits()
        order = np.random.RandomState(_SHUFFLE_SEED).permutation(len(images))
        self.datasets = []
        for k, (style, idx) in enumerate(zip(self.ENVIRONMENTS,
                                              np.array_split(order, len(self.ENVIRONMENTS)))):
            x = torch.from_numpy(images[idx]).unsqueeze(1)
            pad = (28 - DIGIT_SIZE) // 2
            strokes = F.pad(F.interpolate(x, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear",
                                          align_corners=False), (pad,) * 4).clamp(0, 1)
            x = render(strokes, style, _STYLE_SEED + k).contiguous()
            self.datasets.append(TensorDataset(x, torch.from_numpy(labels[idx])))
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 10
