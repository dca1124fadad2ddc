"""The experiments beside the library: the reference models and dataset readers, the run harness (configs,
run folders, checkpoints, exact resume, data parallel), the recipes, the demo, the reproduction of the
paper's tables, the methods table and the benchmark suites (`rbgp.experiments.bench`), and the `rbgp`
commands that drive them. They depend on the core (graphs, patterns, ops, nn, compress, train); nothing
in the core imports them."""

from rbgp.experiments.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from rbgp.experiments.config import PATTERN_NAMES, TrainConfig
from rbgp.experiments.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASET_NAMES,
    FASHION_MEAN,
    FASHION_STD,
    LoadedDataset,
    TensorLoader,
    UnsafePickleError,
    default_transform,
    get_dataset,
    load_cifar,
    load_fashion_mnist,
    normalize,
    random_crop_flip,
    synthetic,
)
from rbgp.experiments.loop import METRIC_FIELDS, TrainResult, build_run_model, evaluate, train
from rbgp.experiments.models import (
    MLP,
    MODEL_NAMES,
    VGG,
    SmallCNN,
    WideResNet,
    build_model,
    vgg19_bn,
    wrn,
)
from rbgp.experiments.recipes import RECIPE_NAMES, Recipe, get_recipe

__all__ = [
    "CHECKPOINT_NAME",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASET_NAMES",
    "FASHION_MEAN",
    "FASHION_STD",
    "MLP",
    "MODEL_NAMES",
    "VGG",
    "LoadedDataset",
    "METRIC_FIELDS",
    "PATTERN_NAMES",
    "RECIPE_NAMES",
    "Recipe",
    "TrainConfig",
    "TrainResult",
    "SmallCNN",
    "TensorLoader",
    "UnsafePickleError",
    "WideResNet",
    "build_model",
    "build_run_model",
    "evaluate",
    "get_recipe",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "default_transform",
    "get_dataset",
    "load_cifar",
    "load_fashion_mnist",
    "normalize",
    "random_crop_flip",
    "synthetic",
    "vgg19_bn",
    "wrn",
]
