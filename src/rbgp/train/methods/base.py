"""The interface every training method implements, and the options parsing they share.

A method decides how the sparse layers' masks come about during training. It plugs into the loop
through a few hooks; all of its state (masks, thresholds, the current `alpha`) lives in the model as
buffers and parameters, so the loop's checkpoint saves it and `--resume` restores it exactly, and
everything else it needs is a pure function of the config and the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, cast

from torch import nn
from torch.nn.utils import parametrize

from rbgp.nn import SPARSE_TYPES, convertible_layers
from rbgp.nn.masked import rezero_masked_


@dataclass
class Options:
    """A method's options (`TrainConfig.method_kwargs`), checked by `from_kwargs`."""

    @classmethod
    def from_kwargs(cls, method: str, kwargs: dict[str, Any]) -> Options:
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ValueError(f"method {method!r}: unknown option(s) {unknown}; valid: {names or 'none'}")
        options = cls(**kwargs)
        options.check(method)
        return options

    def check(self, method: str) -> None:
        """Raise ValueError naming the first bad option."""


class Method:
    """Static masks (the paper's RBGP recipe): the structure is fixed when the model is built."""

    name: ClassVar[str] = "static"
    options_type: ClassVar[type[Options]] = Options

    def __init__(self, config: Any) -> None:
        self.config = config
        self.options = self.options_type.from_kwargs(self.name, config.method_kwargs)
        self.total_steps = 0

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Raise ValueError if `config` does not suit this method (its options included)."""
        cls.options_type.from_kwargs(cls.name, config.method_kwargs)

    def prepare(self, model: nn.Module, total_steps: int) -> None:
        """Attach the method's masks or thresholds to `model` (before the optimizer is made and a
        checkpoint is restored into it); `total_steps` is the number of optimizer steps of the run."""
        self.total_steps = total_steps

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (a group may set its own weight decay)."""
        return [{"params": list(model.parameters())}]

    def on_epoch_start(self, epoch: int) -> None:
        """Called before epoch `epoch` (1-based) trains."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after optimizer step `step` (1-based, counted over the whole run)."""
        rezero_masked_(model)

    def sparse_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers whose sparsity the method controls, by name."""
        return {name: m for name, m in model.named_modules() if isinstance(m, SPARSE_TYPES)}

    def dense_weight_grad(self) -> bool:
        """Whether this epoch's weight gradients of the sparse layers are dense (for the FLOPs count)."""
        return False

    def epoch_metrics(self) -> dict[str, float]:
        """Method-specific values for the epoch's metrics row."""
        return {}


def attach_parametrization(model: nn.Module, config, make: Callable[[nn.Module], nn.Module]) -> dict[str, nn.Module]:
    """Register `make(module)` as the weight parametrization of every layer `sparsify` would convert."""
    layers = dict(convertible_layers(model, exclude=tuple(config.exclude)))
    if not layers:
        raise ValueError(
            f"method {config.method!r}: the model has no layer to prune (first and last layers "
            f"stay dense, excluded: {config.exclude or 'none'})"
        )
    for module in layers.values():
        parametrize.register_parametrization(module, "weight", make(module))
    return layers


def weight_parametrization(module: nn.Module) -> nn.Module:
    """The parametrization `attach_parametrization` registered on `module.weight`."""
    parametrizations = cast(nn.ModuleDict, module.parametrizations)
    return cast(nn.ModuleList, parametrizations["weight"])[0]


class DenseStartMethod(Method):
    """A method that starts from the dense model and attaches its own masks or thresholds."""

    layers: dict[str, nn.Module]

    @classmethod
    def check_config(cls, config: Any) -> None:
        super().check_config(config)
        if config.pattern != "dense":
            raise ValueError(
                f"method {cls.name!r} makes its own masks on a dense start: use pattern 'dense' "
                f"(got {config.pattern!r})"
            )

    def sparse_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        return dict(self.layers)
