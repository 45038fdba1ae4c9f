"""Transfer learning with BN: fine-tuning with BN frozen vs BN in training mode vs training from scratch.

Protocol (all on scikit-learn's bundled digits, 28×28): pretrain cnn_bn on classes 0-4 (`zoo train`, its
defaults); then, for each label budget N per class and each seed, on classes 5-9 with N training images per class:
- head only: `finetune(..., epochs_finetune=0)` (the head phase of the runs below, measured before fine-tuning);
- fine-tune, BN frozen: head epochs, then end-to-end epochs with BN statistics/γ/β fixed;
- fine-tune, BN train: the same, with BN using batch statistics and updating them;
- scratch: `train("cnn_bn")` on the same images for head + fine-tune epochs.
Test accuracy is on all of the held-out 5-9 test images (134), whatever N. Prints a Markdown table (mean ± std over
seeds) and writes JSON.

    python benchmarks/finetune_bn.py [--budgets 5,10,30] [--seeds 0,1,2] [--json PATH]

Defaults: batch 16, head 20 epochs at lr 3e-3, fine-tune 30 epochs at 1e-3 (scratch: 50 epochs at 3e-3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import _common  # noqa: E402,F401 - the repository on sys.path, quiet TensorFlow (benchmarks/_common.py)

METHODS = ("head only", "fine-tune, BN frozen", "fine-tune, BN train", "scratch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="5,10,30")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs-head", type=int, default=20)
    parser.add_argument("--epochs-finetune", type=int, default=30)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "finetune_bn.json")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    from zoo.finetune import finetune
    from zoo.train import train

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = train("cnn_bn", dataset="digits+classes=0-4", out=tmp / "base", verbose=0)
        print(f"base: cnn_bn on digits 0-4, test accuracy {base['test_accuracy']:.4f}", flush=True)
        for budget in budgets:
            target = f"digits+classes=5-9+per-class={budget}"
            for seed in seeds:
                run = {"budget": budget, "seed": seed}
                for mode in ("frozen", "train"):
                    metrics = finetune(tmp / "base", dataset=target, out=tmp / f"{mode}_{budget}_{seed}",
                                       epochs_head=args.epochs_head, epochs_finetune=args.epochs_finetune,
                                       finetune_lr=args.finetune_lr, bn_mode=mode, seed=seed,
                                       batch_size=args.batch_size, verbose=0)
                    run["head only"] = metrics["head_test_accuracy"]
                    run[f"fine-tune, BN {mode}"] = metrics["test_accuracy"]
                scratch = train("cnn_bn", dataset=target, epochs=args.epochs_head + args.epochs_finetune,
                                seed=seed, batch_size=args.batch_size, out=tmp / f"scratch_{budget}_{seed}",
                                verbose=0)
                run["scratch"] = scratch["test_accuracy"]
                rows.append(run)
                print(json.dumps(run), flush=True)

    table = ["| images per class | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    summary = {}
    for budget in budgets:
        cells = []
        for method in METHODS:
            values = [r[method] for r in rows if r["budget"] == budget]
            mean, std = statistics.mean(values), statistics.pstdev(values)
            summary[f"{budget}/{method}"] = {"mean": mean, "std": std}
            cells.append(f"{mean:.3f} ± {std:.3f}")
        table.append(f"| {budget} | " + " | ".join(cells) + " |")
    print("\n".join(table))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "protocol": __doc__, "base_test_accuracy": base["test_accuracy"], "seeds": seeds,
        "epochs_head": args.epochs_head, "epochs_finetune": args.epochs_finetune,
        "finetune_lr": args.finetune_lr, "batch_size": args.batch_size, "rows": rows,
        "summary": summary, "wall_time_s": round(time.perf_counter() - started, 1),
    }, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
