"""The ReLU-DAE theory lab: models, synthetic data, closed forms, training, phase diagrams."""

from diffmem.theory.closed_form import cluster_block, memorization_columns, minimizer_product, rel_err
from diffmem.theory.data import Cluster, make_clusters, separability
from diffmem.theory.diffusion import ReLUDiffusion, sample, train_diffusion
from diffmem.theory.model import ReLUDAE
from diffmem.theory.train import DAESpec, TrainConfig, train, train_grid

__all__ = [
    "Cluster", "DAESpec", "ReLUDAE", "ReLUDiffusion", "TrainConfig", "cluster_block",
    "make_clusters", "memorization_columns", "minimizer_product", "rel_err", "sample",
    "separability", "train", "train_diffusion", "train_grid",
]
