"""RotatedDigits: the embedded default dataset, RotatedMNIST in miniature.

scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside the
``scikit-learn`` wheel, so nothing is downloaded) are shuffled with a fixed seed, split into
four disjoint domains and rotated by 0, 15, 30 and 45 degrees. Inputs are flattened 64-dim
vectors, which selects DomainBed's ``MLP`` featurizer: a step costs about a millisecond on a CPU,
so a whole leave-one-domain-out sweep fits in minutes on two cores.
"""

from __future__ import annotations

import numpy as np
import torch
from domainbed import datasets as db_datasets
from torch.utils.data import TensorDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import rotate

from lpa_domainbed import hparams as hp
from lpa_domainbed.datasets import DATASETS
from lpa_domainbed.datasets.digits import check_train_args, load_digits

__all__ = ["RotatedDigits", "load_digits"]

_SHUFFLE_SEED = 0


@DATASETS.register("RotatedDigits")
class RotatedDigits(db_datasets.MultipleDomainDataset):
    """Four rotation domains of scikit-learn's digits; deterministic, no download.

    Shapes: each environment is a ``TensorDataset`` of ``x [n, 64]`` (float32 in [0, 1]) and
    ``y [n]`` (int64 in 0..9), ``n`` = 449 or 450.
    """

    ENVIRONMENTS = ["0", "15", "30", "45"]
    N_STEPS = 600
    CHECKPOINT_FREQ = 100
    N_WORKERS = 0  # tensors in memory: worker processes only add start-up time on 2 cores
    INPUT_SHAPE = (64,)

    #: dataset-specific hyperparameters, replacing DomainBed's ImageNet-scale defaults.
    HPARAMS = [
        hp.HParam("lr", 1e-3, hp.log_uniform(-3.5, -2.5), "Adam learning rate"),
        hp.HParam("batch_size", 32, lambda r: int(2 ** r.uniform(4, 6)), "per domain"),
        hp.HParam("weight_decay", 0.0, hp.fixed(0.0)),
        hp.HParam("mlp_width", 128, hp.choice([64, 128, 256]), "MLP featurizer width"),
        hp.HParam("mlp_depth", 3, hp.choice([3, 4]), "MLP featurizer depth"),
        hp.HParam("mlp_dropout", 0.0, hp.fixed(0.0), "DomainBed's own MLP dropout"),
    ]

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        check_train_args("RotatedDigits", self.ENVIRONMENTS, test_envs, unit="°")
        images, labels = load_digits()
        order = np.random.RandomState(_SHUFFLE_SEED).permutation(len(images))
        self.datasets = []
        for angle, idx in zip(self.ENVIRONMENTS, np.array_split(order, len(self.ENVIRONMENTS))):
            x = torch.from_numpy(images[idx]).unsqueeze(1)
            x = rotate(x, float(angle), interpolation=InterpolationMode.BILINEAR)
            self.datasets.append(TensorDataset(x.flatten(1).contiguous(),
                                               torch.from_numpy(labels[idx])))
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 10
