"""The worked example of docs/parity.md: `zoo parity --localize` on ResNet50V2 exported without the −0.0 pad guard.

ResNet50V2's stem is conv → ZeroPadding2D → MaxPooling2D with no ReLU in between; ONNX Runtime's Pad_Fusion merges
the zero Pad into the pool's padding, which changes the max wherever a window holds only negative values
(export/pad_pool.py). zoo's export guards against it; this script takes the guard away again (as tests/
test_localize.py does) to show what localisation finds, with ORT's default optimisations and with
`--ort-disable Pad_Fusion`.

    python benchmarks/localize_pad_fusion.py        # ~2 minutes here

Writes benchmarks/results/localize_pad_fusion.json: both commands, their exit codes, printed tables and the ort-cpu
part of each JSON report (first divergent layer, the layers around it, what could not be observed).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path, quiet TensorFlow
from _common import ROOT, environment

RESULTS = ROOT / "benchmarks" / "results" / "localize_pad_fusion.json"
SIZE = 96


def strip_pad_guard(path: Path) -> int:
    """Give every Pad back tf2onnx's plain zero value (no −0.0 constant). Returns how many were changed."""
    import onnx

    proto = onnx.load(str(path))
    changed = 0
    for node in proto.graph.node:
        if node.op_type == "Pad" and len(node.input) > 2:
            del node.input[2:]
            changed += 1
    onnx.save(proto, str(path))
    return changed


def main() -> None:
    from _common import build_application as build

    from export.pipeline import export_model

    zoo = str(Path(__import__("sys").executable).with_name("zoo"))
    runs = []
    with tempfile.TemporaryDirectory(prefix="zoo-padfusion-") as scratch:
        scratch = Path(scratch)
        build("ResNet50V2", SIZE, conv_bias=True).save(scratch / "resnet50v2.keras")
        export = scratch / "export"
        export_model(scratch / "resnet50v2.keras", export, fold_bn=True, onnx=True, savedmodel=False)
        unguarded = strip_pad_guard(export / "model.onnx")
        for extra in ([], ["--ort-disable", "Pad_Fusion"]):
            report = scratch / f"localize{len(runs)}.json"
            command = ["zoo", "parity", "EXPORT", "--localize", "--device", "cpu", *extra, "--json", "REPORT.json"]
            done = subprocess.run([zoo, "parity", str(export), "--localize", "--device", "cpu", *extra,
                                   "--json", str(report)], capture_output=True, text=True, check=False)
            data = json.loads(report.read_text())
            ort = data["runtimes"]["ort-cpu"]
            first = ort["first_divergent_layer"]
            names = [e["layer"] for e in ort["layers"]]
            around = ort["layers"][max(0, names.index(first) - 2): names.index(first) + 2] if first else ort["layers"][:4]
            runs.append({"command": " ".join(command), "exit_code": done.returncode, "table": done.stdout,
                         "stderr_error_lines": [l for l in done.stderr.splitlines() if l.startswith("error:")],
                         "ort_cpu": {k: ort[k] for k in ("first_divergent_layer", "first_divergent_op",
                                                         "output_max_abs", "notes")}
                         | {"layers_around_first": around, "compared": len(ort["layers"]),
                            "unmapped": ort["unmapped"]}})
            print(done.stdout)
    RESULTS.write_text(json.dumps({
        "model": f"keras.applications ResNet50V2 {SIZE}x{SIZE}, weights=None, biased convs, random BN, --fold-bn "
                 f"--onnx, then the pad guard taken away ({unguarded} Pad node(s))",
        "runs": runs, "environment": environment(),
        "command": "python benchmarks/localize_pad_fusion.py"}, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
