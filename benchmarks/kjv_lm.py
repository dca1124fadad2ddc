"""Byte-level language models on the King James Bible (Debian's `bible-kjv-text`), for conversion benchmarks.

The recipe, not the checkpoints, lives in the repository: `train_lm(kind)` trains a small GPT-2- or
LLaMA-shaped transformers model dense from a fixed seed in minutes on 2 CPU cores and caches it under
`benchmarks/.cache/` (ignored by git), so every benchmark that needs it gets the same model.

The text comes from the `bible` reader of Debian's `bible-kjv` package (which depends on
`bible-kjv-text`; `scripts/setup.sh` installs both): verse references are stripped, one verse a line.
The last 10% of the text (by bytes) is the test split; calibration sequences are drawn from the rest.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SEQ = 128
KINDS = ("gpt2", "llama")


def kjv_bytes() -> np.ndarray:
    """The KJV text as uint8 bytes, one verse a line, references removed."""
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError("the KJV text needs Debian's 'bible-kjv' package: sudo apt-get install bible-kjv "
                                "(scripts/setup.sh installs it)")
    out = subprocess.run([exe, "-f", "Genesis 1:1-Revelation 22:21"], capture_output=True, check=True).stdout
    lines = [line.split(b" ", 1)[1] for line in out.splitlines() if b" " in line]
    return np.frombuffer(b"\n".join(lines) + b"\n", dtype=np.uint8)


def splits() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) byte tensors (int64)."""
    data = torch.from_numpy(kjv_bytes().astype(np.int64))
    cut = int(0.9 * data.numel())
    return data[:cut], data[cut:]


def windows(data: torch.Tensor, count: int, seed: int, seq: int = SEQ) -> torch.Tensor:
    """`count` random windows of `seq` bytes, (count, seq)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, data.numel() - seq, (count,), generator=g)
    return torch.stack([data[s:s + seq] for s in starts.tolist()])


def test_windows(test: torch.Tensor, count: int = 256, seq: int = SEQ) -> torch.Tensor:
    """The first `count` disjoint windows of the test split (the evaluation set of every method)."""
    count = min(count, test.numel() // seq)
    return test[:count * seq].view(count, seq)


def make_model(kind: str) -> nn.Module:
    """A 4-layer, width-256 byte-level LM: GPT-2-shaped (Conv1D layers, tied head) or LLaMA-shaped
    (RMSNorm, SwiGLU 688, grouped-query attention 4/2 heads, rotary)."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=256, n_positions=SEQ, n_embd=256, n_layer=4, n_head=4, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=10, eos_token_id=10)
        return tf.GPT2LMHeadModel(cfg)
    if kind == "llama":
        cfg = tf.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                             tie_word_embeddings=True)
        return tf.LlamaForCausalLM(cfg)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@torch.no_grad()
def bits_per_byte(model: nn.Module, data: torch.Tensor, batch: int = 32) -> float:
    """Mean next-byte cross-entropy in bits over the windows `data` (count, seq)."""
    model.eval()
    total, n = 0.0, 0
    for s in range(0, data.shape[0], batch):
        x = data[s:s + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                           reduction="sum")
        total, n = total + float(loss), n + x[:, 1:].numel()
    return total / n / math.log(2)


def fit(model: nn.Module, train: torch.Tensor, steps: int, lr: float, seed: int, batch: int = 32,
        warmup: int = 0, log: bool = False) -> float:
    """AdamW on random windows of `train`, cosine learning rate; the mean loss (bits) of the last 20 steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    model.train()
    recent: list[float] = []
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        starts = torch.randint(0, train.numel() - SEQ, (batch,), generator=g)
        x = torch.stack([train[s:s + SEQ] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        recent = (recent + [float(loss.detach()) / math.log(2)])[-20:]
        if log and step % 100 == 0:
            print(f"  step {step}: {recent[-1]:.3f} bits", flush=True)
    model.eval()
    return float(np.mean(recent))


def train_lm(kind: str, steps: int = 1000, lr: float = 2e-3) -> tuple[nn.Module, dict]:
    """The dense model of `kind`, trained (or loaded from the cache): (model, facts)."""
    import json

    folder = CACHE / f"kjv-{kind}-{steps}"
    model = make_model(kind)
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_model

        load_model(model, str(folder / "model.safetensors"), strict=False)
        model.tie_weights()
        return model.eval(), json.loads((folder / "facts.json").read_text())
    train, test = splits()
    t0 = time.perf_counter()
    final = fit(model, train, steps, lr, seed=0, warmup=100, log=True)
    facts = {"kind": kind, "steps": steps, "lr": lr, "batch": 32, "seq": SEQ, "train_seconds": time.perf_counter() - t0,
             "final_train_bits": final, "test_bits_per_byte": bits_per_byte(model, test_windows(test)),
             "parameters": sum(p.numel() for p in model.parameters())}
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"))
    (folder / "facts.json").write_text(json.dumps(facts, indent=2))
    return model.eval(), facts


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kinds", nargs="*", default=list(KINDS))
    p.add_argument("--steps", type=int, default=1000)
    a = p.parse_args()
    for k in a.kinds:
        print(k, train_lm(k, a.steps)[1], flush=True)
