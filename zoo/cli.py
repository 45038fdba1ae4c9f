"""The `zoo` command line: thin typer commands over zoo (models, data, training) and export (fold, formats, parity).

Heavy libraries (TensorFlow, tf2onnx, onnxruntime) are imported inside the commands so `zoo --help` stays fast.
Library code raises ZooError / ExportError; every command turns them into one `error: ...` line and exit code 1.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter is not for users

app = typer.Typer(
    help="zoo: train BatchNorm networks, fold BN exactly, export SavedModel/ONNX/TFLite and prove parity.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace what is at the output path even if zoo did not write it (never the command's own "
                        "input). Without it zoo replaces only its own earlier outputs.")]

SIZE_HELP = ("Image size HxW for models with dynamic H×W (repeat it: the first size runs at batch 1 and 7, each "
             "further one at batch 2; default 32x32 and 48x64).")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every partial output is removed on the way out."""


def _terminate(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def user_errors():
    """Turn domain errors (and anything unexpected) into one line on stderr and exit code 1. Ctrl-C and SIGTERM
    unwind like an error, so no partial output stays behind (export/atomic.py)."""
    import signal
    import threading

    from export.errors import ExportError
    from zoo.errors import ZooError

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    except typer.Exit:
        raise
    except (ZooError, ExportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted; nothing was written", err=True)
        raise typer.Exit(130) from None
    except Terminated:
        typer.echo("error: terminated (SIGTERM); nothing was written", err=True)
        raise typer.Exit(143) from None
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        if os.environ.get("ZOO_DEBUG"):
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (set ZOO_DEBUG=1 for the traceback)", err=True)
        raise typer.Exit(1) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _quiet_tensorflow() -> None:
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


@app.command("list")
def list_command() -> None:
    """List the registered models with parameter count, default input shape, description and options."""
    with user_errors():
        from zoo.registry import create_model, list_models

        rows = []
        for spec in list_models():
            model = create_model(spec.name)
            shape = "×".join("?" if d is None else str(d) for d in spec.default_input_shape)
            options = [o for o in spec.options if o not in ("input_shape", "num_classes")]
            described = spec.description + (f" [--option {', '.join(options)}]" if options else "")
            rows.append((spec.name, f"{model.count_params():,}", shape, described))
        header = ("model", "params", "input", "description")
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
        for row in [header, *rows]:
            typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])


class Norm(str, enum.Enum):
    batch = "batch"
    instance = "instance"


class LossNet(str, enum.Enum):
    vgg16 = "vgg16"
    vgg19 = "vgg19"
    random = "random"


STYLE_MODELS = ("style", "style_transformer")


def parse_model_options(pairs: list[str]) -> dict:
    """`--option KEY=VALUE` pairs → model options; values read as true/false, integers, numbers, else text."""
    from zoo.errors import ZooError

    options = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key.strip():
            raise ZooError(f"--option {pair!r}: write KEY=VALUE, e.g. --option depth=11")
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text.strip()
        options[key.strip().replace("-", "_")] = value
    return options


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="Registered model name (see `zoo list`); `style` trains the style network.")],
    dataset: Annotated[Optional[str], typer.Option(help="Classifiers: digits | mnist | fashion_mnist | cifar10 | cifar100 | npz:PATH | folder:PATH (default digits), optionally +invert|noise|brightness|contrast, +classes=A-B, +per-class=N, e.g. digits+classes=5-9+per-class=10.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Classifiers: epochs (default: the dataset's own default).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (default 32; style: 4; dncnn: 16).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default 3e-3 with warm-up and cosine decay; style: 1e-3 constant).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling and initialisation.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default: runs/MODEL; style: runs/style_NORM).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Square input size (default: the dataset's; style: 128-px crops).")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Classifiers: random shifts (and flips where label-safe).")] = True,
    style: Annotated[Optional[str], typer.Option(help="Style: the style image (a file or skimage:NAME, e.g. skimage:brick).")] = None,
    content: Annotated[Optional[Path], typer.Option(help="Style: a folder of content images (default: scikit-image's bundled photos).")] = None,
    norm: Annotated[Norm, typer.Option(help="Style: normalisation in the style network.")] = Norm.batch,
    steps: Annotated[Optional[int], typer.Option(help="Style: training steps (default 400).")] = None,
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
    mixed_precision: Annotated[bool, typer.Option("--mixed-precision", help="Classifiers: compute in bfloat16 (CPU) / float16 (GPU), variables float32; the saved model computes in float32. Off by default: it pays only where the hardware has bfloat16/float16 units (see the README).")] = False,
    jit: Annotated[bool, typer.Option("--jit", help="Classifiers: compile the train step with XLA (measured slower for cnn_bn on a 2-core CPU; see the README).")] = False,
    strategy: Annotated[str, typer.Option(help="Classifiers: none; mirrored (every GPU, synchronized BN; --batch-size is the global batch); multiworker (processes/machines from TF_CONFIG, custom training loop, synchronized BN).")] = "none",
    cpu_devices: Annotated[Optional[int], typer.Option(help="Split the CPU into N logical devices (to run --strategy mirrored without GPUs, for testing).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Classifiers: continue from the checkpoint a killed or failed run of the same command left (every epoch is checkpointed).")] = False,
    option: Annotated[Optional[list[str]], typer.Option("--option", help="A model option KEY=VALUE, repeatable, e.g. --option depth=11 --option width=0.25; `zoo list` shows them.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Train a zoo model: classifiers on a dataset, `style` on content photos and a style image, `dncnn` on
    noisy patches.

    Classifiers write model.keras, history.csv, metrics.json and curves.png; style runs write model.keras,
    losses.csv, losses.png, grid.png and metrics.json.
    """
    with user_errors():
        _quiet_tensorflow()
        if cpu_devices is not None:
            from zoo.distribute import split_cpu

            split_cpu(cpu_devices)  # first: TensorFlow must not have started yet
        from zoo.errors import ZooError

        style_options = {"--style": style, "--content": content, "--steps": steps, "--style-weight": style_weight,
                         "--content-weight": content_weight, "--tv-weight": tv_weight, "--vgg-weights": vgg_weights}
        denoise_options = {"--sigma": sigma, "--patch": patch, "--images": images}
        classifier_options = {
            "--recipe": None if recipe == "default" else recipe, "--optimizer": optimizer,
            "--weight-decay": weight_decay, "--schedule": schedule, "--label-smoothing": label_smoothing,
            "--early-stopping": early_stopping, "--keep-best": keep_best or None, "--resume": resume or None,
            "--strategy": None if strategy == "none" else strategy,
            "--mixed-precision": mixed_precision or None, "--jit": jit or None,
        }
        model_config = parse_model_options(option or [])
        if model == "dncnn" or model in STYLE_MODELS:
            given = [name for name, value in classifier_options.items() if value is not None]
            if given:
                raise ZooError(f"{', '.join(given)} is for classifiers, not `zoo train {model}`")
        if model == "dncnn":
            others = {"--dataset": dataset, "--epochs": epochs, "--image-size": image_size, **style_options}
            given = [name for name, value in others.items() if value is not None and name != "--steps"]
            if given:
                raise ZooError(f"{', '.join(given)} is not an option of `zoo train dncnn`")
            from zoo.denoise.train import DEFAULTS as DENOISE_DEFAULTS
            from zoo.denoise.train import train_dncnn

            chosen = {"steps": steps, "patch": patch, "batch_size": batch_size, "lr": lr}
            settings = {k: DENOISE_DEFAULTS[k] if v is None else v for k, v in chosen.items()}
            out = out or Path("runs") / "dncnn"
            unknown = sorted(set(model_config) - {"depth", "filters"})
            if unknown:
                raise ZooError(f"dncnn has no training option {', '.join(unknown)}; use --option depth=N or filters=N")
            metrics = train_dncnn(out=out, sigma=25.0 if sigma is None else sigma, images=images, seed=seed,
                                  overwrite=overwrite, **settings, **model_config)
            psnr = metrics["held_out_psnr"]
            typer.echo(f"held-out PSNR at sigma {metrics['sigma']:g}: noisy {psnr['noisy']:.2f} dB, DnCNN "
                       f"{psnr['dncnn']:.2f} dB after {metrics['steps']} steps in {metrics['wall_time_s']:.1f} s")
            typer.echo(f"wrote {out}/model.keras, history.csv, curves.png, metrics.json")
            return
        style_options.update(denoise_options)
        if model in STYLE_MODELS:
            given = [name for name, value in (("--dataset", dataset), ("--epochs", epochs), *denoise_options.items())
                     if value is not None]
            if given:
                raise ZooError(f"{', '.join(given)} is for classifiers; the style network trains on --content images")
            unknown = sorted(set(model_config) - {"width"})
            if unknown:
                raise ZooError(f"the style network has no training option {', '.join(unknown)}; use --norm, --option width=N")
            if style is None:
                raise ZooError("give the style image: zoo train style --style IMAGE (a file or skimage:NAME)")
            from zoo.style.train import DEFAULTS, train_style

            chosen = {"steps": steps, "image_size": image_size, "batch_size": batch_size, "lr": lr,
                      "style_weight": style_weight, "content_weight": content_weight, "tv_weight": tv_weight}
            settings = {k: DEFAULTS[k] if v is None else v for k, v in chosen.items()}
            out = out or Path("runs") / f"style_{norm.value}"
            metrics = train_style(style=style, content=content, norm=norm.value, loss_net=loss_net.value,
                                  vgg_weights=vgg_weights, seed=seed, out=out, overwrite=overwrite, **settings,
                                  **model_config)
            ev = metrics["evaluation"]
            typer.echo(f"loss network: {metrics['loss_net']}")
            typer.echo(f"style loss of held-out images: {ev['content_images_style_loss']:.4g} before, "
                       f"{ev['stylized_style_loss']:.4g} stylized ({100 * ev['style_loss_ratio']:.1f} %); content "
                       f"loss {ev['stylized_content_loss']:.4g}; {metrics['steps']} steps in "
                       f"{metrics['wall_time_s']:.1f} s")
            typer.echo(f"wrote {out}/model.keras, losses.csv, losses.png, grid.png, metrics.json")
            return
        given = [name for name, value in style_options.items() if value is not None]
        if given or norm is not Norm.batch or loss_net is not LossNet.vgg16:
            given += [o for o, bad in (("--norm", norm is not Norm.batch), ("--loss-net", loss_net is not LossNet.vgg16)) if bad]
            raise ZooError(f"{', '.join(given)} is for `zoo train style`, not {model!r}")
        from zoo.train import train as train_model

        out = out or Path("runs") / model
        metrics = train_model(model, dataset=dataset or "digits", epochs=epochs, batch_size=batch_size, lr=lr,
                              seed=seed, out=out, image_size=image_size, augment=augment, model_config=model_config,
                              resume=resume, strategy=strategy, recipe=recipe, optimizer=optimizer,
                              weight_decay=weight_decay, schedule=schedule, label_smoothing=label_smoothing,
                              early_stopping=early_stopping, keep_best=keep_best,
                              mixed_precision=mixed_precision, jit=jit, overwrite=overwrite)
        typer.echo(f"test accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) on "
                   f"{metrics['dataset']} after {metrics['epochs']} epochs in {metrics['wall_time_s']:.1f} s; "
                   f"wrote {out}/model.keras, history.csv, metrics.json, curves.png")


@app.command("recalibrate-bn")
def recalibrate_bn_command(
    model: Annotated[Path, typer.Argument(help="A .keras model or a run directory (its model.keras).")],
    dataset: Annotated[str, typer.Option(help="Target-domain images, e.g. digits+invert (labels are not used).")],
    batches: Annotated[int, typer.Option(help="Batches of training images to average the statistics over.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    out: Annotated[Optional[Path], typer.Option(help="Output .keras (default: MODEL_adabn.keras beside the model).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the dataset split and the batch order.")] = 0,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Score a matching classifier on the dataset's test split before and after.")] = True,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """AdaBN: re-estimate every BN layer's moving mean and variance on target-domain images; nothing else changes."""
    with user_errors():
        _quiet_tensorflow()
        from export.atomic import check_target, write_text
        from zoo.adabn import recalibrate_file
        from zoo.runs import resolve_source

        source = resolve_source(model)
        out = out or source.keras_path.with_name(f"{source.keras_path.stem}_adabn.keras")
        if json_path is not None:
            check_target(json_path, overwrite=overwrite, sources=[source.keras_path, out], option="--json")
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
        typer.echo(f"wrote {out}")


class BnMode(str, enum.Enum):
    frozen = "frozen"
    train = "train"


@app.command()
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
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/finetune).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Transfer a trained classifier: a new head on its frozen backbone (BN in inference mode), then optional fine-tuning."""
    with user_errors():
        _quiet_tensorflow()
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


@app.command()
def denoise(
    paths: Annotated[list[str], typer.Argument(help="MODEL IMAGE...: a denoiser (.keras, SavedModel folder, .onnx, .tflite, or a run/export folder), then images (files or skimage:NAME).")],
    out: Annotated[Path, typer.Option(help="Output folder; each image is written as OUT/<name>.png.")] = Path("denoised"),
    sigma: Annotated[Optional[float], typer.Option(help="Add Gaussian noise of this σ (8-bit units) first, seeded, and write OUT/<name>_noisy.png too.")] = None,
    device: Annotated[Device, typer.Option(help="ONNX Runtime device for .onnx models.")] = Device.auto,
    seed: Annotated[int, typer.Option(help="Seed of the added noise.")] = 0,
    max_pixels: Annotated[int, typer.Option(help="Refuse images larger than this many pixels (memory).")] = 4096 * 4096,
    overwrite: Overwrite = False,
) -> None:
    """Denoise images of any size with a trained denoiser in any format; gray models see the luma of colour images."""
    with user_errors():
        _quiet_tensorflow()
        from zoo.denoise.evaluate import denoise_files
        from zoo.errors import ZooError

        if len(paths) < 2:
            raise ZooError("give a model and at least one image: zoo denoise MODEL IMAGE... --out DIR")
        written, detail = denoise_files(paths[0], paths[1:], out, sigma=sigma, device=device.value, seed=seed,
                                        max_pixels=max_pixels, overwrite=overwrite)
        typer.echo(f"ran {detail}")
        for path in written:
            typer.echo(f"wrote {path}")


@app.command("eval-denoise")
def eval_denoise(
    model: Annotated[Path, typer.Argument(help="A denoiser: .keras, SavedModel folder, .onnx, .tflite, or a run/export folder.")],
    sigma: Annotated[Optional[list[float]], typer.Option(help="Noise σ in 8-bit units (repeatable; default 15, 25, 50).")] = None,
    device: Annotated[Device, typer.Option(help="ONNX Runtime device for .onnx models.")] = Device.auto,
    seed: Annotated[int, typer.Option(help="Seed of the noise (the same noisy images for every method).")] = 0,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """PSNR and SSIM on held-out images: noisy input, the model, NL-means and TV-Chambolle (scikit-image)."""
    with user_errors():
        _quiet_tensorflow()
        from export.atomic import check_target, write_text
        from zoo.denoise.evaluate import SIGMAS, evaluate_denoising, table

        if json_path is not None:
            check_target(json_path, overwrite=overwrite, sources=[model], option="--json")
        report = evaluate_denoising(model, sigmas=tuple(sigma or SIGMAS), device=device.value, seed=seed)
        typer.echo(f"held-out images: {', '.join(report['images'])}; model ran on {report['runtime']}")
        typer.echo(table(report))
        if json_path is not None:
            write_text(json_path, json.dumps(report, indent=2), overwrite=overwrite)


class Method(str, enum.Enum):
    network = "network"
    optimize = "optimize"


@app.command()
def stylize(
    paths: Annotated[Optional[list[str]], typer.Argument(help="MODEL IMAGE...: a style network (.keras, SavedModel folder, .onnx, .tflite, or a run/export folder), then images (files or skimage:NAME).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder; each image is written as OUT/<name>.png.")] = Path("stylized"),
    method: Annotated[Method, typer.Option(help="network: apply a trained network; optimize: Gatys et al. pixel optimisation (--content, --style).")] = Method.network,
    device: Annotated[Device, typer.Option(help="ONNX Runtime device for .onnx models.")] = Device.auto,
    batch_size: Annotated[int, typer.Option(help="Images of the same size run together, this many at a time.")] = 4,
    max_pixels: Annotated[int, typer.Option(help="Refuse images larger than this many pixels (memory).")] = 4096 * 4096,
    content: Annotated[Optional[str], typer.Option(help="optimize: the content image.")] = None,
    style: Annotated[Optional[str], typer.Option(help="optimize: the style image.")] = None,
    steps: Annotated[int, typer.Option(help="optimize: Adam steps on the pixels.")] = 300,
    image_size: Annotated[int, typer.Option(help="optimize: longer side of the result.")] = 256,
    style_weight: Annotated[float, typer.Option(help="optimize: weight of the style loss.")] = 10.0,
    loss_net: Annotated[LossNet, typer.Option(help="optimize: loss network (see `zoo train --help`).")] = LossNet.vgg19,
    vgg_weights: Annotated[Optional[Path], typer.Option(help="optimize: no-top ImageNet weights .h5.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Stylize images with a trained style network, or by optimising the pixels (Gatys et al.)."""
    with user_errors():
        _quiet_tensorflow()
        from zoo.errors import ZooError

        if method is Method.network:
            if content or style:
                raise ZooError("--content/--style are for --method optimize; a network already holds its style")
            if not paths or len(paths) < 2:
                raise ZooError("give a model and at least one image: zoo stylize MODEL IMAGE... --out DIR")
            from zoo.style.stylize import stylize_files

            written, detail = stylize_files(paths[0], paths[1:], out, device=device.value, batch_size=batch_size,
                                            max_pixels=max_pixels, overwrite=overwrite)
            typer.echo(f"ran {detail}")
            for path in written:
                typer.echo(f"wrote {path}")
            return
        if paths:
            raise ZooError("--method optimize takes --content IMAGE --style IMAGE, not a model and images")
        if not content or not style:
            raise ZooError("--method optimize needs --content IMAGE and --style IMAGE")
        from zoo.images import output_paths, save_image
        from zoo.style.stylize import optimize_image

        [[target]] = output_paths([content], out, variants=("_optimized",), overwrite=overwrite)
        image, record = optimize_image(content, style, steps=steps, image_size=image_size, style_weight=style_weight,
                                       loss_net=loss_net.value, vgg_weights=vgg_weights)
        path = save_image(image, target, overwrite=overwrite)
        first, last = record["first_losses"], record["final_losses"]
        typer.echo(f"loss network: {record['loss_net']}")
        typer.echo(f"style loss {first['style']:.4g} -> {last['style']:.4g}, content loss {last['content']:.4g} "
                   f"after {steps} steps in {record['wall_time_s']:.1f} s; wrote {path}")


class TritonKind(str, enum.Enum):
    gpu = "gpu"
    cpu = "cpu"


@app.command("export")
def export_command(
    src: Annotated[Path, typer.Argument(help="A run directory (with model.keras) or any .keras file.")],
    out: Annotated[Optional[Path], typer.Option(help="Export directory (default: SRC/export or FILE_export).")] = None,
    fold_bn: Annotated[bool, typer.Option("--fold-bn/--no-fold-bn", help="Fold every exactly-foldable BN first.")] = False,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Write model.onnx (tf2onnx).")] = False,
    savedmodel: Annotated[bool, typer.Option("--savedmodel/--no-savedmodel", help="Write saved_model/.")] = True,
    tflite: Annotated[bool, typer.Option("--tflite/--no-tflite", help="Write model.tflite.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (≥ 13).")] = 17,
    nchw: Annotated[bool, typer.Option(help="ONNX takes and returns NCHW images (no layout Transposes).")] = False,
    parity: Annotated[bool, typer.Option("--parity/--no-parity", help="Check every written format against the original.")] = True,
    device: Annotated[Device, typer.Option(help="ONNX Runtime device for the parity check.")] = Device.auto,
    size: Annotated[Optional[list[str]], typer.Option(help=SIZE_HELP)] = None,
    triton: Annotated[Optional[Path], typer.Option(help="Also write a Triton model repository here: REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx (implies --onnx).")] = None,
    triton_name: Annotated[Optional[str], typer.Option(help="Model name in the Triton repository (default: the run's or file's name, sanitised).")] = None,
    triton_max_batch: Annotated[int, typer.Option(help="Triton max_batch_size (0: no batching).")] = 8,
    triton_kind: Annotated[TritonKind, typer.Option(help="Triton instance_group kind.")] = TritonKind.gpu,
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="Also write model_fp16.onnx: float16 weights and compute, float32 inputs/outputs, converted after folding; parity at atol = rtol = 1e-3.")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Fold BN, write SavedModel / ONNX / TFLite, and print the parity table."""
    with user_errors():
        _quiet_tensorflow()
        import zoo.layers  # noqa: F401 - registers zoo's layers so zoo's `.keras` files load in safe_mode
        from export.pipeline import export_model
        from zoo.errors import ZooError

        sizes = _parse_sizes(size)
        from zoo.runs import resolve_source

        source = resolve_source(src)
        onnx = onnx or triton is not None
        if triton_max_batch < 0:
            raise ZooError(f"--triton-max-batch {triton_max_batch} must be 0 (no batching) or more")
        triton_name = triton_name or (src.name if src.is_dir() else src.stem)
        if triton is not None:  # everything that can be checked is, before anything is written
            from export.triton import check_triton_target

            check_triton_target(triton, triton_name, overwrite=overwrite)
        result = export_model(source.keras_path, out or source.default_export_dir, fold_bn=fold_bn, onnx=onnx,
                              savedmodel=savedmodel, tflite=tflite, opset=opset, nchw=nchw,
                              metadata=source.metadata, parity_sizes=sizes if parity else None, fp16=fp16,
                              overwrite=overwrite)
        if result.fold_report is not None:
            typer.echo(result.fold_report.summary())
        if result.fp16_report is not None:
            typer.echo(result.fp16_report.summary())
        for path in result.written:
            typer.echo(f"wrote {path}")
        if parity:
            from export.artifacts import PARITY_REPORT

            _print_parity(result.directory, device=device.value, atol=1e-5, rtol=1e-5,
                          json_path=result.directory / PARITY_REPORT, sizes=sizes, overwrite=True)
        if triton is not None:
            from export.artifacts import ONNX
            from export.triton import write_triton_repository

            model_dir = write_triton_repository(result.directory / ONNX, triton, triton_name, overwrite=overwrite,
                                                max_batch_size=triton_max_batch, instance_kind=triton_kind.value)
            typer.echo(f"wrote Triton model {model_dir.name!r}: {model_dir}/config.pbtxt, {model_dir}/1/model.onnx")


@app.command("parity")
def parity_command(
    src: Annotated[Path, typer.Argument(help="An export directory, a run directory, or a .keras file.")],
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-5,
    rtol: Annotated[float, typer.Option(help="Relative tolerance (an element fails only past both).")] = 1e-5,
    device: Annotated[Device, typer.Option(help="ONNX Runtime device: auto uses CUDA only when it really works.")] = Device.auto,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
    size: Annotated[Optional[list[str]], typer.Option(help=SIZE_HELP)] = None,
    ort_disable: Annotated[Optional[list[str]], typer.Option(help="Switch off an ONNX Runtime graph optimizer by name (repeatable), e.g. Pad_Fusion, to tell an ORT rewrite's error from an export's.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Compare every runtime's outputs with the original Keras model; exit 1 on any failure."""
    with user_errors():
        _quiet_tensorflow()
        import zoo.layers  # noqa: F401 - registers zoo's layers so zoo's `.keras` files load in safe_mode

        sizes = _parse_sizes(size)
        from zoo.runs import resolve_export_dir

        if json_path is not None:
            from export.atomic import check_target

            check_target(json_path, overwrite=overwrite, sources=[src], option="--json")
        with resolve_export_dir(src) as directory:
            _print_parity(directory, device=device.value, atol=atol, rtol=rtol, json_path=json_path, sizes=sizes,
                          ort_disabled=tuple(ort_disable or ()), overwrite=overwrite)


def _parse_sizes(values: list[str] | None) -> list[tuple[int, int]] | None:
    from zoo.errors import ZooError

    if not values:
        return None
    sizes = []
    for value in values:
        height, sep, width = value.lower().partition("x")
        if not (sep and height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
            raise ZooError(f"--size {value!r} is not HxW (e.g. 250x333)")
        sizes.append((int(height), int(width)))
    return sizes


def _print_parity(directory: Path, *, device: str, atol: float, rtol: float, json_path: Path | None,
                  sizes: list[tuple[int, int]] | None = None, ort_disabled: tuple[str, ...] = (),
                  overwrite: bool = False) -> None:
    from export.atomic import write_text
    from export.pipeline import check_parity

    report = check_parity(directory, device=device, atol=atol, rtol=rtol, sizes=sizes, ort_disabled=ort_disabled)
    typer.echo(report.table())
    if json_path is not None:
        write_text(json_path, json.dumps(report.to_dict(), indent=2), overwrite=overwrite)
    if not report.passed:
        typer.echo(f"error: parity FAILED at atol={atol:g} rtol={rtol:g}", err=True)
        raise typer.Exit(1)


@app.command("serve")
def serve_command(
    model: Annotated[Path, typer.Argument(help="The ONNX model to serve (e.g. runs/cnn_bn/export/model.onnx).")],
    name: Annotated[Optional[str], typer.Option(help="Model name in the URLs (default: the run's or file's name).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; the default is loopback only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: a free one, printed on start).")] = 8000,
    device: Annotated[Device, typer.Option(help="ONNX Runtime device: auto uses CUDA only when it really works.")] = Device.auto,
    max_batch: Annotated[int, typer.Option(help="Dynamic batching: most rows stacked into one ONNX Runtime run (1: no batching).")] = 8,
    batch_window_ms: Annotated[float, typer.Option(help="How long a batch that is not full waits for more requests (0: it takes what is queued; batches still grow under load while ORT runs).")] = 0.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted (larger: HTTP 413).")] = 64.0,
    max_request_rows: Annotated[int, typer.Option(help="Most rows (axis 0) one request may send (more: HTTP 413, before its data is decoded).")] = 1024,
    max_connections: Annotated[int, typer.Option(help="Most open connections or running requests at once (past it: HTTP 503).")] = 256,
    keep_alive_s: Annotated[float, typer.Option(help="Seconds an idle kept-alive connection stays open.")] = 5.0,
    read_timeout_s: Annotated[float, typer.Option(help="Seconds a request's line and headers may take to arrive, and the longest pause in its body (then: closed / HTTP 408).")] = 10.0,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request (uvicorn).")] = False,
) -> None:
    """Serve an ONNX model over the KServe v2 / Open Inference Protocol REST API (Triton-compatible clients work)."""
    with user_errors():
        import math
        from urllib.parse import quote

        from zoo.errors import ZooError
        from zoo.checks import check_positive
        from zoo.serving import limits
        from zoo.serving.model import check_model_name

        if max_batch < 1:
            raise ZooError(f"--max-batch {max_batch} must be at least 1 (1: no batching)")
        max_body_bytes = int(check_positive("--max-body-mb", max_body_mb) * 2**20)
        if not (math.isfinite(batch_window_ms) and batch_window_ms >= 0):
            raise ZooError(f"--batch-window-ms {batch_window_ms} must be a finite number, 0 or more")
        limits.check_request_limits(max_body_bytes=max(max_body_bytes, 1), max_request_rows=max_request_rows,
                                    read_timeout_s=read_timeout_s)
        limits.check_connection_limits(max_connections=max_connections, keep_alive_s=keep_alive_s,
                                       read_timeout_s=read_timeout_s)
        if name is not None:
            check_model_name(name)
        model = model.expanduser()
        if not model.is_file():
            raise ZooError(f"model {model} does not exist; pass an .onnx file (e.g. from `zoo export --onnx`)")
        if model.suffix != ".onnx":
            raise ZooError(f"model {model} is not an .onnx file; export one with `zoo export SRC --onnx`")
        from zoo.serving import server

        sock = server.open_socket(host, port)
        with contextlib.closing(sock):
            from export.runtimes import CPU, cuda_unavailable_reason
            from zoo.serving.app import create_app

            app_ = create_app(model, name=name, device=device.value, max_batch=max_batch,
                              batch_window_ms=batch_window_ms, max_body_bytes=max(max_body_bytes, 1),
                              max_request_rows=max_request_rows, read_timeout_s=read_timeout_s)
            served = app_.state.model
            note = ""
            if served.providers[0] == CPU and device is Device.auto:
                note = f" (CUDA not used: {cuda_unavailable_reason()})"
            batching = (f"dynamic batching up to {app_.state.batcher.max_batch} rows"
                        if app_.state.batcher.max_batch > 1 else "no batching")
            typer.echo(f"serving {served.spec.name} ({model}) on {server.bound_url(sock)} with onnxruntime "
                       f"providers: {', '.join(served.providers)}{note}; {batching}")
            typer.echo(f"  KServe v2: {server.bound_url(sock)}/v2/models/{quote(served.spec.name, safe='')}/infer; "
                       f"Ctrl-C stops")
            sys.stdout.flush()
            stopped_by = server.run(app_, sock, log_level="info" if access_log else "warning",
                                    access_log=access_log, max_connections=max_connections,
                                    keep_alive_s=keep_alive_s, read_timeout_s=read_timeout_s)
            stats = app_.state.batcher.stats.to_dict()
            typer.echo(f"stopped{f' on {stopped_by}' if stopped_by else ''} after {stats['requests']} requests "
                       f"in {stats['runs']} ONNX Runtime runs")


@app.command("bench")
def bench_command(
    model: Annotated[Path, typer.Argument(help="An export directory, a run directory, or a .keras file (exported to a temporary directory first, float16 ONNX included).")],
    runtimes: Annotated[Optional[str], typer.Option(help="Comma-separated, from keras, savedmodel, onnx, onnx-fp16, tflite (default: every one the export holds); keras, the baseline, is always measured.")] = None,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    device: Annotated[Device, typer.Option(help="ONNX Runtime device: auto uses CUDA only when it really works; cuda fails when it does not.")] = Device.auto,
    warmup: Annotated[int, typer.Option(help="Untimed runs per runtime and batch first.")] = 5,
    runs: Annotated[int, typer.Option(help="Timed runs per runtime and batch.")] = 50,
    size: Annotated[Optional[str], typer.Option(help="Image size HxW for models with dynamic H×W (default 32x32).")] = None,
    io_binding: Annotated[bool, typer.Option("--io-binding/--no-io-binding", help="ONNX Runtime: inputs and outputs bound on the session's device (no host copies in the timed runs).")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Latency (cold start, p50/p90/p99), throughput and ratio to Keras of every runtime at every batch size."""
    with user_errors():
        from export.bench import check_device, parse_batches, parse_runtimes

        names, batches = parse_runtimes(runtimes), parse_batches(batch)
        spatial = _parse_sizes([size])[0] if size else None
        check_device(device.value)  # before a .keras is exported
        if json_path is not None:
            from export.atomic import check_target

            check_target(json_path, overwrite=overwrite, sources=[model], option="--json")
        _quiet_tensorflow()
        import zoo.layers  # noqa: F401 - registers zoo's layers so zoo's `.keras` files load in safe_mode
        from export.bench import run_bench
        from zoo.runs import resolve_export_dir

        with resolve_export_dir(model, fp16=True) as directory:
            report = run_bench(directory, runtimes=names, batches=batches, device=device.value, warmup=warmup,
                               runs=runs, size=spatial, io_binding=io_binding, model_name=str(model),
                               log=lambda message: typer.echo(message, err=True))
        typer.echo(report.table())
        if json_path is not None:
            typer.echo(f"wrote {report.write_json(json_path, overwrite=overwrite)}")


def main() -> None:  # pragma: no cover - `python -m zoo.cli`
    app(prog_name="zoo")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
