"""`zoo train`, `zoo finetune`, `zoo recalibrate-bn`: commands that make or change a model's weights.

`zoo train MODEL` hands over to the trainer of the model's task (zoo/cli/trainers.py)."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from zoo.cli.common import (
    JsonPath,
    LossNet,
    Out,
    Overwrite,
    load_zoo_layers,
    quiet_tensorflow,
    user_errors,
)

commands = typer.Typer()


class Norm(str, enum.Enum):
    batch = "batch"
    instance = "instance"


class BnMode(str, enum.Enum):
    frozen = "frozen"
    train = "train"


@commands.command()
def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Registered model name (see `zoo list`); `style` trains the style network.")],
    dataset: Annotated[Optional[str], typer.Option(help="Classifiers: digits | mnist | fashion_mnist | cifar10 | cifar100 | npz:PATH | folder:PATH (default digits), optionally +invert|noise|brightness|contrast, +classes=A-B, +per-class=N, e.g. digits+classes=5-9+per-class=10.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Classifiers: epochs (default: the dataset's own default).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (default 32; style: 4; dncnn: 16).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default 3e-3 with warm-up and cosine decay; style: 1e-3 constant).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling and initialisation.")] = 0,
    out: Out = None,
    image_size: Annotated[Optional[int], typer.Option(help="Square input size (default: the dataset's; style: 128-px crops).")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Classifiers: random shifts (and flips where label-safe).")] = True,
    style: Annotated[Optional[str], typer.Option(help="Style: the style image (a file or skimage:NAME, e.g. skimage:brick).")] = None,
    content: Annotated[Optional[Path], typer.Option(help="Style: a folder of content images (default: scikit-image's bundled photos).")] = None,
    norm: Annotated[Norm, typer.Option(help="Style: normalisation in the style network.")] = Norm.batch,
    steps: Annotated[Optional[int], typer.Option(help="Style and dncnn: training steps (default 400; dncnn: 1700).")] = None,
    style_weight: Annotated[Optional[float], typer.Option(help="Style: weight of the style loss (default 10).")] = None,
    content_weight: Annotated[Optional[float], typer.Option(help="Style: weight of the content loss (default 1).")] = None,
    tv_weight: Annotated[Optional[float], typer.Option(help="Style: weight of the total-variation loss (default 1).")] = None,
    loss_net: Annotated[LossNet, typer.Option(help="Style: loss network; vgg16/vgg19 need ImageNet weights (Keras cache or --vgg-weights), random runs offline but is not a perceptual loss.")] = LossNet.vgg16,
    vgg_weights: Annotated[Optional[Path], typer.Option(help="Style: the no-top ImageNet weights .h5 for --loss-net vgg16/vgg19.")] = None,
    sigma: Annotated[Optional[float], typer.Option(help="dncnn: Gaussian noise σ in 8-bit units (default 25).")] = None,
    patch: Annotated[Optional[int], typer.Option(help="dncnn: training patch size (default 40).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="dncnn: a folder of clean training images (default: scikit-image's bundled photos).")] = None,
    recipe: Annotated[str, typer.Option(help="Classifiers: default (Adam 3e-3, warm-up + cosine, batch 32) or paper (the published recipe, e.g. He et al. for resnet20/56: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, 164 epochs, ÷10 at 50/75 %); the options below override single fields.")] = "default",
    optimizer: Annotated[Optional[str], typer.Option(help="Classifiers: adam or sgd (momentum 0.9).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Classifiers: decoupled weight decay, e.g. 1e-4.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Classifiers: cosine (with warm-up), step (÷10 at 50 % and 75 %) or constant.")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Classifiers: label smoothing, e.g. 0.1.")] = None,
    early_stopping: Annotated[Optional[int], typer.Option(help="Classifiers: stop after N epochs without a better validation accuracy.")] = None,
    keep_best: Annotated[bool, typer.Option("--keep-best", help="Classifiers: save the weights of the best validation epoch, not the last.")] = False,
    mixed_precision: Annotated[bool, typer.Option("--mixed-precision", help="Classifiers: compute in bfloat16 (CPU) / float16 (GPU), variables float32; the saved model computes in float32. Off by default: it pays only where the hardware has bfloat16/float16 units (docs/training.md).")] = False,
    jit: Annotated[bool, typer.Option("--jit", help="Classifiers: compile the train step with XLA (measured slower for cnn_bn on a 2-core CPU; docs/training.md).")] = False,
    strategy: Annotated[str, typer.Option(help="Classifiers: none; mirrored (every GPU, synchronized BN; --batch-size is the global batch); multiworker (processes/machines from TF_CONFIG, custom training loop, synchronized BN).")] = "none",
    cpu_devices: Annotated[Optional[int], typer.Option(help="Split the CPU into N logical devices (to run --strategy mirrored without GPUs, for testing).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Classifiers: continue from the checkpoint a killed or failed run of the same command left (every epoch is checkpointed).")] = False,
    option: Annotated[Optional[list[str]], typer.Option("--option", help="A model option KEY=VALUE, repeatable, e.g. --option depth=11 --option width=0.25; `zoo list` shows them.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Train a zoo model: classifiers on a dataset, `style` on content photos and a style image, `dncnn` on
    noisy patches.

    Options marked for one kind of model are refused for the others. The run goes to --out (default runs/MODEL;
    style: runs/style_NORM). Classifiers write model.keras, history.csv, metrics.json and curves.png; style runs
    write model.keras, losses.csv, losses.png, grid.png and metrics.json.
    """
    options = {name: value for name, value in locals().items() if name != "ctx"}  # every parameter, converted
    with user_errors():
        quiet_tensorflow()
        if cpu_devices is not None:
            from zoo.distribute import split_cpu

            split_cpu(cpu_devices)  # before TensorFlow's runtime starts (importing it does not start it)
        from zoo.cli.trainers import run_trainer

        run_trainer(ctx, options)


@commands.command("recalibrate-bn")
def recalibrate_bn_command(
    model: Annotated[Path, typer.Argument(help="A .keras model or a run directory (its model.keras).")],
    dataset: Annotated[str, typer.Option(help="Target-domain images, e.g. digits+invert (labels are not used).")],
    batches: Annotated[int, typer.Option(help="Batches of training images to average the statistics over.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    out: Out = None,
    seed: Annotated[int, typer.Option(help="Seed for the dataset split and the batch order.")] = 0,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Score a matching classifier on the dataset's test split before and after.")] = True,
    json_path: JsonPath = None,
    overwrite: Overwrite = False,
) -> None:
    """AdaBN: re-estimate every BN layer's moving mean and variance on target-domain images; nothing else changes.

    Writes --out (default: MODEL_adabn.keras beside the model)."""
    with user_errors():
        from export.atomic import check_target, write_text
        from zoo.runs import resolve_source

        source = resolve_source(model)
        out = out or source.keras_path.with_name(f"{source.keras_path.stem}_adabn.keras")
        if json_path is not None:
            check_target(json_path, overwrite=overwrite, sources=[source.keras_path, out], option="--json")
        load_zoo_layers()
        from zoo.adabn import recalibrate_file

        report = recalibrate_file(source.keras_path, dataset=dataset, out=out, batches=batches,
                                  batch_size=batch_size, seed=seed, evaluate=evaluate, overwrite=overwrite)
        typer.echo(f"recalibrated {len(report['layers'])} BN layers on {report['images']} images of {report['dataset']}")
        typer.echo("layer  channels  mean shift (old std units)  variance ratio new/old")
        for row in report["layers"]:
            typer.echo(f"{row['layer']}  {row['channels']}  {row['mean_shift']:.3f}  {row['var_ratio']:.3f}")
        if report["test_accuracy_before"] is not None:
            typer.echo(f"test accuracy on {report['dataset']}: {report['test_accuracy_before']:.4f} before, "
                       f"{report['test_accuracy_after']:.4f} after")
        if json_path is not None:
            write_text(json_path, json.dumps(report, indent=2), overwrite=overwrite)
        typer.echo(f"wrote {report['out']}")  # out, or OUT/MODEL_adabn.keras for a folder


@commands.command()
def finetune(
    base: Annotated[Path, typer.Argument(help="The base classifier: a run directory (its model.keras) or any .keras file.")],
    dataset: Annotated[str, typer.Option(help="Target dataset, e.g. digits+classes=5-9+per-class=10 (specs as in `zoo train --help`).")],
    cut: Annotated[Optional[str], typer.Option(help="Layer whose output the new head starts from (default: the input of the base's classifier layer).")] = None,
    keep_head: Annotated[bool, typer.Option("--keep-head", help="Keep the base's own head (same classes, new domain) instead of a new one.")] = False,
    epochs_head: Annotated[int, typer.Option(help="Epochs training the head with the backbone frozen.")] = 20,
    epochs_finetune: Annotated[int, typer.Option(help="Then epochs fine-tuning end to end (0: head only).")] = 0,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the head phase.")] = 3e-3,
    finetune_lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of the fine-tune phase (default lr/10).")] = None,
    bn_mode: Annotated[BnMode, typer.Option(help="BN during fine-tuning: frozen (base statistics, γ/β fixed) or train (batch statistics, updated).")] = BnMode.frozen,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random shifts (and flips where they keep the class).")] = True,
    seed: Annotated[int, typer.Option(help="Seed for splits, shuffling, augmentation and the new head.")] = 0,
    out: Out = None,
    overwrite: Overwrite = False,
) -> None:
    """Transfer a trained classifier: a new head on its frozen backbone (BN in inference mode), then optional fine-tuning.

    The run goes to --out (default runs/finetune)."""
    with user_errors():
        load_zoo_layers()
        from zoo.finetune import finetune as run_finetune

        out = out or Path("runs") / "finetune"
        metrics = run_finetune(base, dataset=dataset, out=out, cut=cut, keep_head=keep_head, epochs_head=epochs_head,
                               epochs_finetune=epochs_finetune, lr=lr, finetune_lr=finetune_lr,
                               bn_mode=bn_mode.value, batch_size=batch_size, augment=augment, seed=seed,
                               overwrite=overwrite)
        typer.echo(f"cut at {metrics['cut']!r}; {metrics['samples']['train']} training images of {metrics['dataset']}")
        typer.echo(f"test accuracy after the head phase {metrics['head_test_accuracy']:.4f}"
                   + (f", after fine-tuning (BN {metrics['bn_mode']}) {metrics['test_accuracy']:.4f}"
                      if metrics["epochs_finetune"] else "") + f"; {metrics['wall_time_s']:.1f} s")
        typer.echo(f"wrote {out}/model.keras, history.csv, metrics.json, curves.png")
