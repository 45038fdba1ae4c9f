"""`zoo denoise`, `zoo eval-denoise`, `zoo stylize`: image-to-image models (from any format) on image files."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from zoo.cli.common import (
    Device,
    DeviceOption,
    JsonPath,
    LossNet,
    Out,
    Overwrite,
    load_zoo_layers,
    user_errors,
)

commands = typer.Typer()

MaxPixels = Annotated[int, typer.Option(help="Refuse images larger than this many pixels (memory).")]


class Method(str, enum.Enum):
    network = "network"
    optimize = "optimize"


@commands.command()
def denoise(
    paths: Annotated[list[str], typer.Argument(help="MODEL IMAGE...: a denoiser (.keras, SavedModel folder, .onnx, .tflite, or a run/export folder), then images (files or skimage:NAME).")],
    out: Out = None,
    sigma: Annotated[Optional[float], typer.Option(help="Add Gaussian noise of this σ (8-bit units) first, seeded, and write OUT/<name>_noisy.png too.")] = None,
    device: DeviceOption = Device.auto,
    seed: Annotated[int, typer.Option(help="Seed of the added noise.")] = 0,
    max_pixels: MaxPixels = 4096 * 4096,
    overwrite: Overwrite = False,
) -> None:
    """Denoise images of any size with a trained denoiser in any format; gray models see the luma of colour images.

    Each image is written as OUT/<name>.png (--out, default ./denoised)."""
    with user_errors():
        from zoo.errors import ZooError

        if len(paths) < 2:
            raise ZooError("give a model and at least one image: zoo denoise MODEL IMAGE... --out DIR")
        load_zoo_layers()
        from zoo.denoise.evaluate import denoise_files

        written, detail = denoise_files(paths[0], paths[1:], out or Path("denoised"), sigma=sigma, device=device.value,
                                        seed=seed, max_pixels=max_pixels, overwrite=overwrite)
        typer.echo(f"ran {detail}")
        for path in written:
            typer.echo(f"wrote {path}")


@commands.command("eval-denoise")
def eval_denoise(
    model: Annotated[Path, typer.Argument(help="A denoiser: .keras, SavedModel folder, .onnx, .tflite, or a run/export folder.")],
    sigma: Annotated[Optional[list[float]], typer.Option(help="Noise σ in 8-bit units (repeatable; default 15, 25, 50).")] = None,
    device: DeviceOption = Device.auto,
    seed: Annotated[int, typer.Option(help="Seed of the noise (the same noisy images for every method).")] = 0,
    json_path: JsonPath = None,
    overwrite: Overwrite = False,
) -> None:
    """PSNR and SSIM on held-out images: noisy input, the model, NL-means and TV-Chambolle (scikit-image)."""
    with user_errors():
        from export.atomic import check_target, write_text

        if json_path is not None:
            check_target(json_path, overwrite=overwrite, sources=[model], option="--json")
        load_zoo_layers()
        from zoo.denoise.evaluate import SIGMAS, evaluate_denoising, table

        report = evaluate_denoising(model, sigmas=tuple(sigma or SIGMAS), device=device.value, seed=seed)
        typer.echo(f"held-out images: {', '.join(report['images'])}; model ran on {report['runtime']}")
        typer.echo(table(report))
        if json_path is not None:
            write_text(json_path, json.dumps(report, indent=2), overwrite=overwrite)


@commands.command()
def stylize(
    paths: Annotated[Optional[list[str]], typer.Argument(help="MODEL IMAGE...: a style network (.keras, SavedModel folder, .onnx, .tflite, or a run/export folder), then images (files or skimage:NAME).")] = None,
    out: Out = None,
    method: Annotated[Method, typer.Option(help="network: apply a trained network; optimize: Gatys et al. pixel optimisation (--content, --style).")] = Method.network,
    device: DeviceOption = Device.auto,
    batch_size: Annotated[int, typer.Option(help="Images of the same size run together, this many at a time.")] = 4,
    max_pixels: MaxPixels = 4096 * 4096,
    content: Annotated[Optional[str], typer.Option(help="optimize: the content image.")] = None,
    style: Annotated[Optional[str], typer.Option(help="optimize: the style image.")] = None,
    steps: Annotated[int, typer.Option(help="optimize: Adam steps on the pixels.")] = 300,
    image_size: Annotated[int, typer.Option(help="optimize: longer side of the result.")] = 256,
    style_weight: Annotated[float, typer.Option(help="optimize: weight of the style loss.")] = 10.0,
    loss_net: Annotated[LossNet, typer.Option(help="optimize: loss network (see `zoo train --help`).")] = LossNet.vgg19,
    vgg_weights: Annotated[Optional[Path], typer.Option(help="optimize: no-top ImageNet weights .h5.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Stylize images with a trained style network, or by optimising the pixels (Gatys et al.).

    Each image is written as OUT/<name>.png (--out, default ./stylized)."""
    with user_errors():
        from zoo.errors import ZooError

        out = out or Path("stylized")
        if method is Method.network:
            if content or style:
                raise ZooError("--content/--style are for --method optimize; a network already holds its style")
            if not paths or len(paths) < 2:
                raise ZooError("give a model and at least one image: zoo stylize MODEL IMAGE... --out DIR")
            load_zoo_layers()
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
        load_zoo_layers()
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
