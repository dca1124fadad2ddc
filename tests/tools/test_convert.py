"""`rbgp convert` on a tiny saved transformers model: the converted folder loads with from_pretrained, and bad
inputs get one clear line."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import rbgp
from rbgp.cli import main
from rbgp.nn import RBGPLinear

transformers = pytest.importorskip("transformers")

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form, and void.\n" * 40


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2,
                                                                 n_head=4, bos_token_id=10, eos_token_id=10))
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text(TEXT)
    return tmp_path


def test_convert_writes_a_folder_from_pretrained_loads(saved, capsys):
    out = saved / "sparse"
    assert main(["convert", str(saved / "model"), str(out), "--sparsity", "0.5", "--calibration",
                 str(saved / "text.txt"), "--seq-len", "32", "--samples", "16"]) == 0
    assert "output error" in capsys.readouterr().out
    loaded = rbgp.from_pretrained(transformers.GPT2LMHeadModel, out)
    layers = [m for m in loaded.modules() if isinstance(m, RBGPLinear)]
    assert len(layers) == 8 and all(m.block_width >= 8 for m in layers)
    report = (out / "rbgp_report.json").read_text()
    assert '"calibration_windows": 16' in report and '"tokenizer": "utf-8 bytes"' in report
    ids = torch.tensor([list(TEXT[:32].encode())])
    dense = transformers.GPT2LMHeadModel.from_pretrained(saved / "model").eval()
    # the converted model predicts the text about as well as the dense one (random init: both near uniform)
    loss = lambda m: float(m(input_ids=ids, labels=ids).loss.detach())  # noqa: E731
    assert abs(loss(loaded) - loss(dense)) < 0.5


def test_targets_choose_what_each_layer_is_fitted_to(saved, capsys):
    """--targets layer (SparseGPT's) gives other weights than the default dense targets; a bad value exits 2."""
    args = ["--sparsity", "0.75", "--calibration", str(saved / "text.txt"), "--seq-len", "32", "--samples", "16"]
    for targets in ("dense", "layer"):
        assert main(["convert", str(saved / "model"), str(saved / targets), *args, "--targets", targets]) == 0
    dense, layer = (rbgp.from_pretrained(transformers.GPT2LMHeadModel, saved / t).state_dict() for t in ("dense", "layer"))
    assert dense.keys() == layer.keys()
    assert any(not torch.equal(dense[k], layer[k]) for k in dense if k.startswith("transformer.h.1"))
    with pytest.raises(SystemExit) as stop:
        main(["convert", str(saved / "model"), str(saved / "bad"), *args, "--targets", "outputs"])
    assert stop.value.code == 2 and "invalid choice: 'outputs'" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    (lambda p: (p / "text.txt").write_text(""), "the calibration text is empty"),
    (lambda p: (p / "text.txt").write_text("short"), "fewer than one window of --seq-len 32"),
    (lambda p: (p / "model" / "config.json").unlink(), "has no config.json"),
    (lambda p: (p / "text.txt").write_bytes(b"\xff\xfe\x00abc" * 40), "is not UTF-8 text"),
])
def test_bad_inputs_one_line(saved, capsys, change, message):
    change(saved)
    code = main(["convert", str(saved / "model"), str(saved / "out"), "--calibration", str(saved / "text.txt"),
                 "--seq-len", "32"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (saved / "out").exists()


def test_sequence_longer_than_the_model_and_non_empty_out(saved, capsys):
    args = ["convert", str(saved / "model"), str(saved / "out"), "--calibration", str(saved / "text.txt")]
    assert main([*args, "--seq-len", "65"]) == 2
    assert "--seq-len 65 is longer than the model takes (64 positions)" in capsys.readouterr().err
    (saved / "out").mkdir()
    (saved / "out" / "x").write_text("keep me")
    assert main([*args, "--seq-len", "32"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (saved / "out" / "x").read_text() == "keep me"


def _convert_args(saved, out) -> list[str]:
    return ["convert", str(saved / "model"), str(out), "--sparsity", "0.5", "--calibration", str(saved / "text.txt"),
            "--seq-len", "32", "--samples", "8"]


def test_bit_identical_across_two_fresh_processes(saved):
    for out in ("a", "b"):
        run = subprocess.run([sys.executable, "-m", "rbgp.cli", *_convert_args(saved, saved / out)],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    names = sorted(p.name for p in (saved / "a").iterdir())
    assert names == sorted(p.name for p in (saved / "b").iterdir()) and "model.safetensors" in names
    assert (saved / "a" / "model.safetensors").read_bytes() == (saved / "b" / "model.safetensors").read_bytes()


# the converter as run by `rbgp convert`, stopped (a marker file, then a long sleep) after the converted model
# is written into its temporary folder and before that folder is renamed into place: the last moment a kill can
# come before the output is complete
KILLED_CONVERT = """
import pathlib, sys, time
import transformers
from rbgp.cli import main
save = transformers.PreTrainedModel.save_pretrained
def stalled(self, path, *args, **kwargs):
    save(self, path, *args, **kwargs)
    pathlib.Path(sys.argv[1]).write_text(str(path))
    time.sleep(600)
transformers.PreTrainedModel.save_pretrained = stalled
main(sys.argv[2:])
"""


def test_kill_9_leaves_no_output_and_a_later_run_completes(saved):
    marker, out = saved / "saved.marker", saved / "sparse"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CONVERT, str(marker), *_convert_args(saved, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no marker"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    tmp = Path(marker.read_text())
    assert not out.exists()  # the killed run left no OUT_DIR, only its hidden temporary folder
    assert tmp.parent == saved and tmp.name.startswith(".sparse.") and (tmp / "model.safetensors").exists()
    assert main(_convert_args(saved, out)) == 0
    layers = [m for m in rbgp.from_pretrained(transformers.GPT2LMHeadModel, out).modules() if isinstance(m, RBGPLinear)]
    assert len(layers) == 8


def test_calibration_tokens_outside_the_vocabulary(saved, capsys):
    """A model whose vocabulary is smaller than its tokenizer's (here: bytes) gets one line, nothing written."""
    small = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=200, n_positions=64, n_embd=64, n_layer=1,
                                                                 n_head=4, bos_token_id=10, eos_token_id=10))
    small.save_pretrained(saved / "model")  # no tokenizer: bytes, which need 256 ids
    assert main(_convert_args(saved, saved / "out")) == 2
    assert "cannot hold bytes (256 ids needed)" in capsys.readouterr().err
    assert not (saved / "out").exists()
