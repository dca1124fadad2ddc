"""Checkpoints: atomic writes, refusal of bad files, and exact resume after a stop or a crash."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import warnings

import pytest
import torch

from rbgp.experiments import loop
from rbgp.experiments import CHECKPOINT_NAME, TrainConfig, load_checkpoint, save_checkpoint, train
from rbgp.experiments.checkpoint import MAGIC

_NUMBERS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "steps", "epoch")


def _cfg(**kw) -> TrainConfig:
    base = dict(model="mlp", dataset="synthetic_cifar10", model_kwargs={"hidden": [128, 128]},
                pattern="rbgp4", sparsity=0.875, epochs=3, batch_size=32, limit_train=192,
                limit_test=64, lr=0.05, schedule="multistep", milestones=[2], gamma=0.5,
                weight_decay=1e-4)
    base.update(kw)
    return TrainConfig(**base)


def _numbers(history):
    return [{k: h[k] for k in _NUMBERS} for h in history]


def _files(path):
    return sorted(p.name for p in path.iterdir())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    res = train(_cfg(), out, quiet=True)
    return res, out


def test_resume_after_stop_is_exact(tmp_path, uninterrupted):
    full, _ = uninterrupted
    first = train(_cfg(), tmp_path, quiet=True, stop_after_epoch=1)
    assert first.stopped_early and len(first.history) == 1
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 1
    resumed = train(_cfg(), tmp_path, resume=True, quiet=True)
    assert _numbers(resumed.history) == _numbers(full.history)  # exact equality
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, name
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert _numbers(rows) == _numbers(full.history)


def test_resume_after_crash_mid_epoch_is_exact(tmp_path, uninterrupted):
    full, _ = uninterrupted

    def crash(epoch, step, loss):
        if epoch == 2 and step == 3:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), tmp_path, quiet=True, on_batch=crash)
    assert _files(tmp_path) == [CHECKPOINT_NAME, "metrics.csv", "metrics.jsonl", "run.json"]
    resumed = train(_cfg(), tmp_path, resume=True, quiet=True)
    assert _numbers(resumed.history) == _numbers(full.history)


def test_checkpoint_holds_plain_state(uninterrupted):
    _, out = uninterrupted
    state = load_checkpoint(out / CHECKPOINT_NAME)  # weights_only=True inside
    assert state["epoch"] == 3 and state["args"] == _cfg().to_dict()
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert state["scheduler"]["milestones"] == {2: 1}
    assert len(state["history"]) == 3 and state["optimizer"]["state"]


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"a": torch.ones(2)})
    assert _files(tmp_path) == [CHECKPOINT_NAME]
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(loop.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"a": torch.zeros(2)})
    monkeypatch.undo()
    assert _files(tmp_path) == [CHECKPOINT_NAME]  # no temp file left behind
    assert path.read_bytes() == before  # old file intact


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path, uninterrupted):
    _, out = uninterrupted
    good = (out / CHECKPOINT_NAME).read_bytes()
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(good[: len(good) // 2])  # truncated, as by a crash without atomic writes
    with pytest.raises(ValueError, match="checksum mismatch, the checkpoint is corrupt"):
        train(_cfg(), tmp_path, resume=True, quiet=True)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not an rbgp training checkpoint"):
        load_checkpoint(path)
    save_checkpoint(path, {"model": {}})
    with pytest.raises(ValueError, match="not an rbgp training checkpoint"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)  # a bare torch archive: read as version 1 (no checksum)
    with pytest.warns(UserWarning, match="no checksum"), pytest.raises(ValueError, match="not an rbgp"):
        load_checkpoint(path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for legacy in (True, False):
        evil = {"format": "x", "evil": Evil()}
        torch.save(evil, path) if legacy else save_checkpoint(path, evil)
        with pytest.warns(UserWarning) if legacy else contextlib.nullcontext(), \
                pytest.raises(ValueError, match="refused") as err:
            load_checkpoint(path)  # weights_only refuses arbitrary globals
        assert "weights_only" not in str(err.value)  # torch's advice to drop it is not relayed


def test_bit_flip_anywhere_is_refused(tmp_path, uninterrupted):
    _, out = uninterrupted
    good = (out / CHECKPOINT_NAME).read_bytes()
    path = tmp_path / CHECKPOINT_NAME
    rng = random.Random(0)
    positions = [0, 5, 9, 10, 41, 42, 100, len(good) // 2, len(good) - 1]
    positions += rng.sample(range(len(good)), 40)
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError):
            load_checkpoint(path)
    path.write_bytes(good)
    assert load_checkpoint(path)["epoch"] == 3


def test_non_finite_state_is_refused(tmp_path, uninterrupted):
    _, out = uninterrupted
    state = load_checkpoint(out / CHECKPOINT_NAME)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = state["model"][key].clone()
    state["model"][key].view(-1)[0] = float("nan")
    path = tmp_path / CHECKPOINT_NAME
    with pytest.raises(ValueError, match=f"model tensor '{key}' holds 1 non-finite"):
        save_checkpoint(path, state)
    torch.save({**state, "version": 1}, path)  # written around the check (version 1): refused on load
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=f"'{key}' holds 1 non-finite"):
        load_checkpoint(path)


def test_mismatched_checkpoint_is_refused(tmp_path, uninterrupted):
    _, out = uninterrupted
    (tmp_path / CHECKPOINT_NAME).write_bytes((out / CHECKPOINT_NAME).read_bytes())
    with pytest.raises(ValueError, match="pattern: checkpoint 'rbgp4' vs now 'unstructured'"):
        train(_cfg(pattern="unstructured"), tmp_path, resume=True, quiet=True)
    with pytest.raises(ValueError, match="seed"):
        train(_cfg(seed=1), tmp_path, resume=True, quiet=True)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["world_size"] == 1
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {**state, "world_size": 2})
    with pytest.raises(ValueError, match="run of 2 process"):
        train(_cfg(), tmp_path, resume=True, quiet=True)
    for field, value in (("history", 5), ("args", [1]), ("epoch", "x")):  # crafted with a valid checksum
        with pytest.raises(ValueError, match=f"checkpoint field '{field}' must be"):
            save_checkpoint(tmp_path / "x.pt", {**state, field: value})  # never written either
        buffer = io.BytesIO()
        torch.save({**state, field: value}, buffer)
        payload = buffer.getvalue()
        (tmp_path / CHECKPOINT_NAME).write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
        with pytest.raises(ValueError, match=f"checkpoint field '{field}' must be"):
            train(_cfg(), tmp_path, resume=True, quiet=True)
    save_checkpoint(tmp_path / CHECKPOINT_NAME, state)
    # Same settings but a tampered model state: the RBGP structure fingerprint no longer fits.
    key = next(k for k in state["model"] if k.endswith("structure_id"))
    state["model"][key] = torch.zeros_like(state["model"][key])
    save_checkpoint(tmp_path / CHECKPOINT_NAME, state)
    with pytest.raises(ValueError, match=r"does not fit the model built from its settings \(RuntimeError: Error\(s\) in loading state_dict for \w+: .*structure"):
        train(_cfg(), tmp_path, resume=True, quiet=True)


def test_resume_can_extend_epochs(tmp_path):
    cfg = _cfg(epochs=1, limit_train=64)
    train(cfg, tmp_path, quiet=True)
    more = train(_cfg(epochs=2, limit_train=64), tmp_path, resume=True, quiet=True)
    assert [h["epoch"] for h in more.history] == [1, 2]


def test_cli_resume_takes_settings_from_checkpoint(tmp_path, capsys):
    from rbgp.cli import main

    run = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--dataset", "synthetic_cifar10", "--hidden", "128,128",
            "--pattern", "rbgp4", "--sparsity", "0.875", "--epochs", "2", "--batch-size", "32",
            "--limit-train", "96", "--limit-test", "32", "--out-dir", str(run), "--quiet"]
    assert main(argv + ["--stop-after-epoch", "1"]) == 0
    assert main(["train", "--out-dir", str(run), "--resume", "--quiet"]) == 0  # no other flags
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref = tmp_path / "ref"
    assert main(argv[:-3] + ["--out-dir", str(ref), "--quiet"]) == 0
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert _numbers(rows) == _numbers(ref_rows) and len(rows) == 2
    assert main(["train", "--out-dir", str(run), "--resume", "--lr", "0.2", "--quiet"]) == 2
    assert "lr: checkpoint 0.05 vs now 0.2" in capsys.readouterr().err


def test_resume_without_checkpoint(tmp_path):
    cfg = _cfg(epochs=1, limit_train=64)
    with pytest.raises(ValueError, match="--resume: no checkpoint at"):
        train(cfg, tmp_path / "run", resume=True, quiet=True)
    assert not (tmp_path / "run").exists()
    res = train(cfg, tmp_path / "run", resume="if-present", quiet=True)  # starts fresh
    assert [h["epoch"] for h in res.history] == [1]
    again = train(_cfg(epochs=2, limit_train=64), tmp_path / "run", resume="if-present", quiet=True)
    assert [h["epoch"] for h in again.history] == [1, 2] and again.history[0] == res.history[0]


def test_stale_temps_removed_and_metrics_level_on_resume(tmp_path, capsys):
    cfg = _cfg(epochs=2, limit_train=64)
    train(cfg, tmp_path, quiet=True, stop_after_epoch=1)
    stale = [tmp_path / f".{CHECKPOINT_NAME}.abc12345.tmp", tmp_path / ".metrics.jsonl.x_y9.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    keep = tmp_path / "notes.tmp"  # not one of ours
    keep.write_text("mine")
    # metrics one epoch ahead of the checkpoint (as if killed between the two writes)
    rows = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(rows + rows.replace('"epoch": 1', '"epoch": 2'))
    res = train(cfg, tmp_path, resume=True)
    assert "removed .checkpoint.pt.abc12345.tmp" in capsys.readouterr().err
    assert not any(p.exists() for p in stale) and keep.exists()
    saved = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert _numbers(saved) == _numbers(res.history) and len(saved) == 2


def test_divergence_stops_and_keeps_last_checkpoint(tmp_path):
    cfg = _cfg(epochs=3, limit_train=64)

    def poison(epoch, step, loss):
        if epoch == 2 and step == 0:
            with torch.no_grad():
                next(p for p in res_model[0].parameters()).fill_(float("nan"))

    res_model = []
    orig = loop.build_run_model

    def capture(*a, **k):
        model, report = orig(*a, **k)
        res_model.append(model)
        return model, report

    loop_build = pytest.MonkeyPatch()
    loop_build.setattr(loop, "build_run_model", capture)
    try:
        with pytest.raises(loop.TrainingDiverged, match=r"epoch 2, step 2: the loss is nan.*epoch 1 .* is kept"):
            train(cfg, tmp_path, quiet=True, on_batch=poison)
    finally:
        loop_build.undo()
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, capsys):
    """Two writers never share a run folder: the second stops before it touches a file (not even a
    temp file the live writer is writing), in one line naming the running process."""
    import os

    from rbgp.cli import main
    from rbgp.files import folder_lock

    run = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--dataset", "synthetic_cifar10", "--hidden", "64", "--epochs", "1",
            "--limit-train", "64", "--limit-test", "32", "--out-dir", str(run), "--quiet"]
    with folder_lock(run):  # the live writer
        writing = run / ".checkpoint.pt.abc123.tmp"
        writing.write_bytes(b"half a checkpoint")
        for extra in ([], ["--resume-if-present"], ["--overwrite"]):
            assert main(argv + extra) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err[-1].startswith("rbgp train: error: ") and f"in use by process {os.getpid()}" in err[-1]
        assert writing.exists() and sorted(p.name for p in run.iterdir()) == [".checkpoint.pt.abc123.tmp", ".rbgp.lock"]
    assert main(argv) == 0  # free again
    assert not (run / ".rbgp.lock").exists()


def test_resume_on_another_thread_count_warns(tmp_path):
    cfg = _cfg(epochs=3, limit_train=64)
    train(cfg, tmp_path, quiet=True, stop_after_epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same thread count: no warning
        train(cfg, tmp_path, resume=True, quiet=True, stop_after_epoch=2)
    threads = torch.get_num_threads()
    other = 1 if threads != 1 else 2
    try:
        torch.set_num_threads(other)
        with pytest.warns(UserWarning, match=f"written with {threads} CPU threads, this process runs {other}"):
            train(cfg, tmp_path, resume=True, quiet=True)
    finally:
        torch.set_num_threads(threads)
