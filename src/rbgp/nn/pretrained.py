"""Saving and loading sparsified models: plain safetensors files and Hugging Face `save_pretrained`.

A sparsified model's state is tensors only, so `safetensors.torch.save_model` and `save_pretrained`
take it as it is. To load it, build the same architecture, sparsify it with the same arguments (the
structure is a pure function of them), then load the tensors: `load_state` does the last step for a
file or a folder, and `from_pretrained` does all three for a transformers model, reading the
arguments that `sparsify` stored in its config (`config.rbgp`).
"""

from __future__ import annotations

import copy
import reprlib
from pathlib import Path
from typing import Any

from torch import nn

from rbgp.nn.sparsify import sparsify


def load_state(model: nn.Module, path: str | Path) -> None:
    """Load a safetensors file, or every `*.safetensors` file of a folder (as `save_pretrained` writes
    them, shards included), into `model`, which must already be sparsified like the saved one.

    Keys the files leave out are accepted only for tied parameters (saved once under another name);
    any other missing or unexpected key, or a layer whose sparsity structure differs, raises an error
    that names it. No pickle is read.
    """
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no safetensors file at {path}")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    state = _transformers_keys(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    untied = [k for k in missing if k not in params or id(params[k]) not in loaded]
    if untied or unexpected:
        raise ValueError(f"state in {path} does not fit the model: {_why_keys_differ(untied, list(unexpected))}")
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()


def _transformers_keys(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """`state` under the model's own parameter names: transformers renames keys when it saves (ViT's
    `layers.0.attention.q_proj` is written as `encoder.layer.0.attention.attention.query`, fused MoE
    experts per expert), and undoes it when it loads; this applies its load-time conversions (renamings
    and converters) to the keys of a state read from the files. Other models: `state` as it is."""
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key
    except ImportError:  # no transformers, or a version without conversion mappings
        return state
    if not isinstance(model, PreTrainedModel):
        return state
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    if not renamings and not converters:
        return state
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    pending: dict[str, Any] = {}
    for key in sorted(state, key=dot_natural_key):
        target, pattern = rename_source_key(key, renamings, converters)
        if pattern is None:
            transform, pattern = pending.setdefault(target, WeightRenaming(key, target)), key
        else:
            transform = pending.setdefault(target, copy.deepcopy(by_pattern[pattern]))
        transform.add_tensor(target, key, pattern, state[key])
    out: dict[str, Any] = {}
    for target, transform in pending.items():
        for name, value in transform.convert(target, model=model, config=model.config).items():
            out[name] = value[0] if isinstance(value, list) else value
    return out


def _why_keys_differ(missing: list[str], unexpected: list[str]) -> str:
    """The likely cause of a key mismatch: a layer sparse on one side and dense on the other (sparsify
    arguments differ), or names that do not match at all (another architecture or model class)."""

    def layers(keys: list[str]) -> set[str]:
        return {k.rpartition(".")[0] for k in keys}

    sparse_keys = ("values", "row_index", "col_index", "structure_id")
    flipped = {
        k for k in layers(missing) & layers(unexpected) if any(f"{k}.{s}" in missing + unexpected for s in sparse_keys)
    }
    detail = f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}" + (
        "..." if len(unexpected) > 8 else ""
    )
    if flipped:
        return (
            f"layers {sorted(flipped)[:4]} are sparse on one side and dense on the other: the model was not "
            f"sparsified with the same arguments as the saved one ({detail})"
        )
    return f"its names do not match the model's: another architecture or model class? ({detail})"


_RECIPE_TYPES: dict[str, tuple[type, ...]] = {
    "sparsity": (float, int, dict),
    "pattern": (str,),
    "pattern_kwargs": (dict,),
    "exclude": (list,),
    "keep_first_last": (bool,),
    "seed": (int,),
    "init": (str,),
    "shuffle": (bool,),
    "backend": (str,),
    "on_infeasible": (str,),
    "distribution": (str,),
}
_REQUIRED = ("sparsity", "pattern", "pattern_kwargs")


def _checked_recipe(recipe: dict, where: str) -> dict:
    """A copy of the stored sparsify arguments, each field's type checked (the values are then checked by
    sparsify itself); ValueError naming the field and what it must be."""
    for key in _REQUIRED:
        if key not in recipe:
            raise ValueError(f"{where} has no {key!r} field (it needs {list(_REQUIRED)})")
    for key, value in recipe.items():
        kinds = _RECIPE_TYPES.get(key)
        if kinds is None:
            raise ValueError(f"{where} has an unknown field {reprlib.repr(key)} (valid: {sorted(_RECIPE_TYPES)})")
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join({"dict": "a mapping"}.get(k.__name__, k.__name__) for k in kinds)
            raise ValueError(f"{where}: field {key!r} must be {names}, got {reprlib.repr(value)}")
    if not all(isinstance(k, str) for k in recipe["pattern_kwargs"]):
        raise ValueError(f"{where}: field 'pattern_kwargs' must map argument names to values")
    if not all(isinstance(g, str) for g in recipe.get("exclude", [])):
        raise ValueError(f"{where}: field 'exclude' must be a list of name patterns (strings)")
    return copy.deepcopy(recipe)


def from_pretrained(model_class: Any, path: str | Path, **config_overrides: Any) -> nn.Module:
    """A transformers model saved with `save_pretrained` after `rbgp.sparsify`: its config is read, the
    model is built from it (random init, nothing downloaded), sparsified with the stored arguments and
    loaded from the folder's safetensors files; returned in eval mode, like transformers does.

    model_class: a transformers model class (`GPT2LMHeadModel`) or Auto class (`AutoModelForCausalLM`).
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), **config_overrides)
    recipe = getattr(config, "rbgp", None)
    if not isinstance(recipe, dict):
        raise ValueError(
            f"{path}/config.json has no 'rbgp' entry: it was not saved from a model sparsified by "
            f"rbgp.sparsify (load it with {getattr(model_class, '__name__', model_class)}"
            f".from_pretrained instead)"
        )
    recipe = _checked_recipe(recipe, f"{path}/config.json's 'rbgp' entry")
    build = getattr(model_class, "from_config", None) or model_class
    model = build(config)
    if recipe.get("init") in ("magnitude", "calibrated"):  # the fitted structures are in the files: nothing to fit
        recipe["init"] = "kaiming"
    try:
        sparsify(model, recipe.pop("sparsity"), recipe.pop("pattern"), **recipe.pop("pattern_kwargs"), **recipe)
    except (TypeError, ValueError) as err:
        detail = str(err) if len(str(err)) <= 300 else f"{str(err)[:300]}..."
        raise ValueError(f"{path}/config.json's 'rbgp' entry does not rebuild the model: {detail}") from err
    load_state(model, path)
    return model.eval()
