"""Fashion-MNIST test accuracy of a compressed RBGP4 CNN after each quantisation (+ Huffman), and file sizes.

Trains the small CNN at 90% RBGP4 (2 epochs on a fixed 20000-image subset), writes it with
`rbgp.compress.save` in every coding, loads each file into a fresh model and evaluates it on the full
test set. Writes benchmarks/compress/accuracy.json and .md. Run: python benchmarks/compress_accuracy.py
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

from rbgp.compress import load, save
from rbgp.experiments import TrainConfig, build_run_model, evaluate, get_dataset, train
from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text

OUT = Path(__file__).parent / "compress"


def main() -> None:
    config = TrainConfig(model="cnn", pattern="rbgp4", sparsity=0.9, epochs=2, limit_train=20000)
    model = train(config, None, quiet=True).model.eval()
    test = get_dataset("fashion_mnist", None, "test")
    _, base = evaluate(model, test.x, test.y)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in (None, "int8", "int4", "kmeans16"):
            for huffman in ([False] if quantize is None else [False, True]):
                path = Path(tmp) / "m.rbgp"
                header = save(model, path, quantize=quantize, huffman=huffman)
                twin, _ = build_run_model(config, test.num_classes, test.input_shape)
                _, acc = evaluate(load(path, twin).eval(), test.x, test.y)
                rows.append({"quantize": quantize or "none (fp32)", "huffman": huffman, "file_bytes": header["file_bytes"],
                             "test_acc": acc, "vs_fp32": acc - base})
    data = {"command": "python benchmarks/compress_accuracy.py", "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "config": config.to_dict(), "fp32_test_acc": base, "rows": rows}
    write_json(OUT / "accuracy.json", data)
    lines = [f"Command: `{data['command']}`; {data['machine']}; {data['date']}. Small CNN, 90% RBGP4, 2 epochs on "
             f"20000 Fashion-MNIST images; test accuracy on all 10000 after a save/load round trip.", "",
             "| coding | Huffman | file bytes | test acc % | vs fp32 |", "|---|---|---|---|---|"]
    lines += [f"| {r['quantize']} | {'yes' if r['huffman'] else 'no'} | {r['file_bytes']:,} | {r['test_acc']:.2f} | "
              f"{r['vs_fp32']:+.2f} |" for r in rows]
    write_text(OUT / "accuracy.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
