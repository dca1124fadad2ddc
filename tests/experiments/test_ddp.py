"""Data-parallel training: 2 gloo processes on CPU launched by torchrun, sparse models."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

WORKER = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    import torch.distributed as dist
    from rbgp.experiments import TrainConfig
    from rbgp.experiments.loop import build_run_model, sparse_layers, train

    out = sys.argv[1]
    dist.init_process_group("gloo")  # train() must join an existing group, not make its own
    rank = dist.get_rank()
    dump = {}
    for pattern in ("rbgp4", "unstructured"):
        cfg = TrainConfig(model="mlp", dataset="synthetic_cifar10", pattern=pattern,
                          sparsity=0.875, model_kwargs={"hidden": [128, 128]}, epochs=2,
                          batch_size=16, max_steps=3, limit_train=128, limit_test=64, lr=0.05,
                          weight_decay=1e-4, device="cpu")
        res = train(cfg, f"{out}/{pattern}", quiet=True)
        layers = sparse_layers(res.model)
        dump[pattern] = {
            "history": [{k: h[k] for k in ("train_loss", "test_loss", "test_acc")}
                        for h in res.history],
            # .structure is built by each rank on its own: DDP never broadcasts it
            "mask_digests": [hashlib.sha256(m.structure.weight_mask().tobytes()).hexdigest()
                             for m in layers],
            "off_mask_zero": all(
                bool((getattr(m, "weight", m.dense_weight())[~m.mask.bool()] == 0).all())
                for m in layers),
            "n_sparse": len(layers),
            "moved": any(not torch.equal(a, b) for a, b in zip(
                build_run_model(cfg, 10, (3, 32, 32))[0].parameters(), res.model.parameters())),
        }
        torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()
                    if isinstance(v, torch.Tensor)}, f"{out}/{pattern}_rank{rank}.pt")
    assert dist.is_initialized()  # train() left the caller's group alone
    dist.destroy_process_group()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(dump, f)
    """
)


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path, torchrun_two):
    torchrun_two(WORKER)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    for pattern in ("rbgp4", "unstructured"):
        a, b = r0[pattern], r1[pattern]
        assert a["n_sparse"] == 1 and a["mask_digests"] == b["mask_digests"]
        assert a["off_mask_zero"] and b["off_mask_zero"]
        assert a["moved"] and b["moved"]  # training changed the weights: the test is not vacuous
        assert a["history"] == b["history"]  # metrics are all-reduced, so every rank agrees
        s0 = torch.load(tmp_path / f"{pattern}_rank0.pt", weights_only=True)
        s1 = torch.load(tmp_path / f"{pattern}_rank1.pt", weights_only=True)
        assert s0.keys() == s1.keys()
        for k in s0:
            assert torch.equal(s0[k], s1[k]), f"{pattern}: {k} differs across ranks"
        # only rank 0 writes the run's files, and it wrote all of them
        run = tmp_path / pattern
        assert sorted(p.name for p in run.iterdir()) == [
            "checkpoint.pt", "metrics.csv", "metrics.jsonl", "run.json"]
        assert json.loads((run / "run.json").read_text())["world_size"] == 2
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
