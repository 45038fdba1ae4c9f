"""`zoo list`: the model registry."""

from __future__ import annotations

import typer

from zoo.cli.common import quiet_tensorflow, user_errors

commands = typer.Typer()


@commands.command("list")
def list_command() -> None:
    """List the registered models with parameter count, default input shape, description and options."""
    with user_errors():
        quiet_tensorflow()
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
