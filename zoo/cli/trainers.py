"""What `zoo train MODEL` runs, by the model's task in the registry (zoo/registry.py): one trainer per task, each
with the `zoo train` options it takes. An option given on the command line that the model's trainer does not take
is one error line naming it (and what it is for); nothing is trained.

A trainer is `run(model, options, model_config)`: `options` holds every `zoo train` parameter by its Python name
(None or the default when not given) as attributes, `model_config` the `--option KEY=VALUE` pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import typer

STYLE_ALIAS = "style"  # `zoo train style` trains the style network, style_transformer in the registry
COMMON = frozenset({"model", "batch_size", "lr", "seed", "out", "option", "overwrite", "cpu_devices"})


@dataclass(frozen=True)
class Trainer:
    takes: frozenset[str]  # `zoo train` parameters it reads beyond COMMON
    run: Callable[[str, SimpleNamespace, dict], None]
    label: str  # whom its options are for, in errors: "classifiers"


def train_classifier(model: str, o: SimpleNamespace, model_config: dict) -> None:
    from zoo.train import train

    out = o.out or Path("runs") / model
    metrics = train(model, dataset=o.dataset or "digits", epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
                    seed=o.seed, out=out, image_size=o.image_size, augment=o.augment, model_config=model_config,
                    resume=o.resume, strategy=o.strategy, recipe=o.recipe, optimizer=o.optimizer,
                    weight_decay=o.weight_decay, schedule=o.schedule, label_smoothing=o.label_smoothing,
                    early_stopping=o.early_stopping, keep_best=o.keep_best, mixed_precision=o.mixed_precision,
                    jit=o.jit, overwrite=o.overwrite)
    typer.echo(f"test accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) on "
               f"{metrics['dataset']} after {metrics['epochs']} epochs in {metrics['wall_time_s']:.1f} s; "
               f"wrote {out}/model.keras, history.csv, metrics.json, curves.png")


def train_style_network(model: str, o: SimpleNamespace, model_config: dict) -> None:
    from zoo.errors import ZooError

    unknown = sorted(set(model_config) - {"width"})
    if unknown:
        raise ZooError(f"the style network has no training option {', '.join(unknown)}; use --norm, --option width=N")
    if o.style is None:
        raise ZooError("give the style image: zoo train style --style IMAGE (a file or skimage:NAME)")
    from zoo.style.train import DEFAULTS, train_style

    chosen = {"steps": o.steps, "image_size": o.image_size, "batch_size": o.batch_size, "lr": o.lr,
              "style_weight": o.style_weight, "content_weight": o.content_weight, "tv_weight": o.tv_weight}
    settings = {k: DEFAULTS[k] if v is None else v for k, v in chosen.items()}
    out = o.out or Path("runs") / f"style_{o.norm.value}"
    metrics = train_style(style=o.style, content=o.content, norm=o.norm.value, loss_net=o.loss_net.value,
                          vgg_weights=o.vgg_weights, seed=o.seed, out=out, overwrite=o.overwrite, **settings,
                          **model_config)
    ev = metrics["evaluation"]
    typer.echo(f"loss network: {metrics['loss_net']}")
    typer.echo(f"style loss of held-out images: {ev['content_images_style_loss']:.4g} before, "
               f"{ev['stylized_style_loss']:.4g} stylized ({100 * ev['style_loss_ratio']:.1f} %); content "
               f"loss {ev['stylized_content_loss']:.4g}; {metrics['steps']} steps in {metrics['wall_time_s']:.1f} s")
    typer.echo(f"wrote {out}/model.keras, losses.csv, losses.png, grid.png, metrics.json")


def train_denoiser(model: str, o: SimpleNamespace, model_config: dict) -> None:
    from zoo.errors import ZooError

    unknown = sorted(set(model_config) - {"depth", "filters"})
    if unknown:
        raise ZooError(f"{model} has no training option {', '.join(unknown)}; use --option depth=N or filters=N")
    from zoo.denoise.train import DEFAULTS, train_dncnn

    chosen = {"steps": o.steps, "patch": o.patch, "batch_size": o.batch_size, "lr": o.lr}
    settings = {k: DEFAULTS[k] if v is None else v for k, v in chosen.items()}
    out = o.out or Path("runs") / model
    metrics = train_dncnn(out=out, sigma=25.0 if o.sigma is None else o.sigma, images=o.images, seed=o.seed,
                          overwrite=o.overwrite, **settings, **model_config)
    psnr = metrics["held_out_psnr"]
    typer.echo(f"held-out PSNR at sigma {metrics['sigma']:g}: noisy {psnr['noisy']:.2f} dB, DnCNN "
               f"{psnr['dncnn']:.2f} dB after {metrics['steps']} steps in {metrics['wall_time_s']:.1f} s")
    typer.echo(f"wrote {out}/model.keras, history.csv, curves.png, metrics.json")


TRAINERS = {
    "classification": Trainer(frozenset({
        "dataset", "epochs", "image_size", "augment", "recipe", "optimizer", "weight_decay", "schedule",
        "label_smoothing", "early_stopping", "keep_best", "mixed_precision", "jit", "strategy", "resume"}),
        train_classifier, "classifiers"),
    "style_transfer": Trainer(frozenset({
        "style", "content", "norm", "steps", "style_weight", "content_weight", "tv_weight", "loss_net",
        "vgg_weights", "image_size"}), train_style_network, f"`zoo train {STYLE_ALIAS}`"),
    "denoising": Trainer(frozenset({"sigma", "patch", "images", "steps"}), train_denoiser, "`zoo train dncnn`"),
}


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


def run_trainer(ctx: typer.Context, options: dict) -> None:
    """Train `options["model"]` (a registered name, or `style`) with the trainer of its task, after checking that
    every option given on the command line (`ctx`) is one that trainer takes."""
    from zoo.errors import ZooError
    from zoo.registry import get_model_spec

    model = options["model"]
    spec = get_model_spec("style_transformer" if model == STYLE_ALIAS else model)
    trainer = TRAINERS[spec.task]
    given = [param for param in ctx.command.params  # typer's own click: its ParameterSource, compared by name
             if getattr(ctx.get_parameter_source(param.name), "name", None) == "COMMANDLINE"]
    foreign = [param for param in given if param.name not in COMMON | trainer.takes]
    if foreign:
        owners = [t.label for t in TRAINERS.values() if any(p.name in t.takes for p in foreign)]
        flags = [_flag(param, options[param.name]) for param in foreign]
        raise ZooError(f"{', '.join(flags)} {'is' if len(flags) == 1 else 'are'} for {' or '.join(owners)}, "
                       f"not `zoo train {model}`")
    trainer.run(model, SimpleNamespace(**options), parse_model_options(options["option"] or []))


def _flag(param, value) -> str:
    """The option as it was written: --no-augment for augment=False."""
    if value is False and getattr(param, "secondary_opts", None):
        return param.secondary_opts[0]
    return param.opts[0]
