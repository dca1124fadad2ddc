"""The rules `sparsify` follows for Hugging Face transformers models, in one place.

A transformers model is recognised by its `config` and `get_output_embeddings` (transformers itself is
never imported here). Its output head and classifier heads stay dense by role; its fused MoE experts
are split into one linear layer per expert for the conversion (`rbgp.nn.experts`) and fused again where
none is converted; the sparsify arguments are stored in `config.rbgp`, which `save_pretrained` keeps
for `rbgp.from_pretrained`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rbgp.nn.calibration import set_module
from rbgp.nn.experts import EXPERT_PARAMETERS, SplitExperts, split_problem

HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "cls", "pooler", "head", "heads")
"""Module names (any component) of a transformers model's output heads and classifiers, kept dense by role."""


def is_transformers_model(model: nn.Module) -> bool:
    return hasattr(model, "config") and callable(getattr(model, "get_output_embeddings", None))


def output_heads(model: nn.Module, candidates: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """The candidates that are the model's output head (`get_output_embeddings()`) or named like a head
    (lm_head, classifier, score, pooler, ...), with the reason they stay dense."""
    out = model.get_output_embeddings()  # type: ignore[operator]  # checked by is_transformers_model
    return {
        name: "output head / classifier (kept dense by role)"
        for name, m in candidates
        if m is out or any(part in HEAD_NAMES for part in name.split("."))
    }


def split_experts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Replace every fused MoE experts module that `SplitExperts` reproduces by its split form; returns
    (name, the fused module) for each, to put back what is not converted."""
    fused = [(name, m) for name, m in model.named_modules() if split_problem(m) is None]
    for name, m in fused:
        set_module(model, name, SplitExperts(m))
    return fused


def unsplit_experts(model: nn.Module, split: list[tuple[str, nn.Module]], skipped: list[tuple[str, str]]) -> None:
    """Put the fused experts modules back; their experts' entries in `skipped` become one per fused weight."""
    for name, fused in split:
        set_module(model, name, fused)
        inside = [why for n, why in skipped if n.startswith(f"{name}.")]
        skipped[:] = [(n, why) for n, why in skipped if not n.startswith(f"{name}.")]
        skipped += [
            (f"{name}.{p}", f"MoE experts: {inside[0] if inside else 'not converted'}") for p in EXPERT_PARAMETERS
        ]


def store_recipe(model: nn.Module, recipe: dict[str, Any]) -> None:
    """Keep the sparsify arguments in a transformers config (`config.rbgp`), which save_pretrained writes."""
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict") and hasattr(config, "save_pretrained"):
        config.rbgp = recipe  # type: ignore[union-attr]  # a transformers PretrainedConfig
