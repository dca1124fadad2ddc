"""PEFT LoRA on RBGP layers: a sparse base with dense low-rank adapters, the usual way to fine-tune a
pruned model. PEFT supports layer types it does not know through its custom-module registration;
`register_lora(config)` registers `RBGPLoraLinear` for `RBGPLinear`, and `lora_targets(model)` names
the linear layers (sparse or dense, output head excluded) as PEFT's "all-linear" would, which cannot
see RBGP layers. Needs `pip install peft`.

    config = register_lora(LoraConfig(r=8, target_modules=lora_targets(model)))
    model = get_peft_model(model, config)            # train; model.save_pretrained(dir)
    model = load_lora(base, dir)                     # later, on the same sparse base
    merged = model.merge_and_unload()                # stays sparse: the update is projected onto the mask
"""

from __future__ import annotations

import os
import warnings
from typing import cast

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from rbgp.nn.rbgp_layers import RBGPLinear, is_hf_conv1d


class RBGPLoraLinear(LoraLinear):
    """LoRA beside an `RBGPLinear`: the adapter runs dense next to the sparse base (PEFT's forward).
    Merging adds the update's entries that lie on the base's mask and drops the rest, so a merged model
    keeps its structure and its speed (a warning gives the share of the update dropped); unmerging
    subtracts exactly what was added. DoRA and fan_in_fan_out are refused."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs) -> None:
        if config.use_dora:
            raise ValueError("DoRA is not supported on RBGP layers (its weight norm is dense); use plain LoRA")
        if config.fan_in_fan_out:
            raise ValueError("fan_in_fan_out must be False for RBGP layers: they take (..., in) like nn.Linear")
        with warnings.catch_warnings():  # PEFT warns about every registered custom layer type
            warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
            super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base = cast(RBGPLinear, self.get_base_layer())  # registered for RBGPLinear only
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.lora_A:
                continue
            delta = self.get_delta_weight(name).detach().to(base.values)
            merged = base.dense_matrix().detach() + delta
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights: the adapter {name!r} seems to be broken")
            base.load_dense_(merged)
            if self.lora_bias[name]:  # PEFT warns that a layer without a bias cannot merge it
                cast(nn.Parameter, base.bias).data += self.lora_B[name].bias * self.scaling[name]
            self.merged_adapters.append(name)
            total = float((delta * delta).sum())
            if total > 0:
                dropped = 1 - float((delta * delta * base.mask).sum()) / total
                if dropped > 1e-6:
                    warnings.warn(
                        f"merging LoRA adapter {name!r} into a sparse layer keeps its structure: {dropped:.1%} of "
                        f"the update's energy lies off the mask and is dropped (rbgp.densify first to keep it all)",
                        stacklevel=2,
                    )

    def unmerge(self) -> None:
        base = cast(RBGPLinear, self.get_base_layer())  # registered for RBGPLinear only
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self.lora_A:
                continue
            base.load_dense_(base.dense_matrix().detach() - self.get_delta_weight(name).detach().to(base.values))
            if self.lora_bias[name]:
                cast(nn.Parameter, base.bias).data -= self.lora_B[name].bias * self.scaling[name]


def register_lora(config: LoraConfig) -> LoraConfig:
    """`config`, made able to target `RBGPLinear` layers (PEFT's custom-module registration)."""
    if not isinstance(config, LoraConfig):
        raise TypeError(f"register_lora takes a peft.LoraConfig, got {type(config).__name__}")
    config._register_custom_module({RBGPLinear: RBGPLoraLinear})
    return config


def lora_targets(model: nn.Module) -> list[str]:
    """The names of the model's linear layers (RBGPLinear, nn.Linear, transformers' Conv1D) except its
    output head: what target_modules="all-linear" means, for a model with RBGP layers."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    linear = (RBGPLinear, nn.Linear)
    skip = nn.modules.linear.NonDynamicallyQuantizableLinear  # MultiheadAttention.out_proj: read as .weight
    names = [
        name
        for name, m in model.named_modules()
        if (isinstance(m, linear) or is_hf_conv1d(m)) and m is not head and not isinstance(m, skip)
    ]
    if not names:
        raise ValueError("the model has no linear layer (RBGPLinear, nn.Linear or Conv1D) for LoRA to target")
    return names


def load_lora(model: nn.Module, path: str | os.PathLike, **kwargs) -> PeftModel:
    """`PeftModel.from_pretrained` for a saved adapter whose targets include RBGP layers (the registration
    is not saved with the adapter). `model` is the same sparse base it was trained on."""
    config = register_lora(LoraConfig.from_pretrained(os.fspath(path)))
    return PeftModel.from_pretrained(model, os.fspath(path), config=config, **kwargs)
