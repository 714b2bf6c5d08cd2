"""`diffgen encode`: what the text encoder sees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from diffgen.cli.app import app
from diffgen.cli.common import CheckpointOption, DebugOption, check_output_dir, load_model, user_errors
from diffgen.errors import InputError


@app.command()
def encode(
    texts: Annotated[list[str], typer.Argument(help="Prompts to encode.")],
    checkpoint: CheckpointOption = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Write ids, per-token states and pooled embeddings (.safetensors).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    debug: DebugOption = False,
) -> None:
    """Show what the text encoder sees: token counts, pooled norms, cosine similarities."""
    with user_errors(debug):
        if output is not None:
            check_output_dir(output.parent)
            if output.is_dir():
                raise InputError(f"output {output} is a folder; give a .safetensors file name")
        from diffgen.encode import encode_report, save_encoding
        from diffgen.engine.prompt_weights import parse_weights

        model = load_model(checkpoint, image_tower=False)
        report = encode_report(model, texts)
        if output is not None:
            save_encoding(output, report, model)
        enc = report.encoding
        if as_json:
            typer.echo(json.dumps({
                "prompts": [{"prompt": p, "num_tokens": n, "truncated": t, "pooled_norm": round(v, 6),
                             "weights": [[text, round(w, 6)] for text, w in parse_weights(p)]}
                            for p, n, t, v in zip(texts, enc.num_tokens, enc.truncated,
                                                  report.pooled_norms)],
                "cosine": [[round(c, 6) for c in row] for row in report.cosine],
                "context_length": report.context_length,
                **({"output": str(output)} if output else {}),
            }))
            return
        _print_encode_tables(report)


def _print_encode_tables(report: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from diffgen.engine.prompt_weights import parse_weights

    console = Console()
    enc = report.encoding
    table = Table(title=f"text encoder (context {report.context_length} tokens)")
    for column in ("#", "prompt", "tokens", "pooled norm", "weighted parts"):
        table.add_column(column, justify="right" if column not in ("prompt", "weighted parts") else "left")
    for i, (prompt, count, cut, norm) in enumerate(
            zip(report.prompts, enc.num_tokens, enc.truncated, report.pooled_norms)):
        tokens = f"[red]{count} (truncated to {report.context_length})[/red]" if cut else str(count)
        weighted = ", ".join(f"{text.strip()!r} x{w:.3g}" for text, w in parse_weights(prompt) if w != 1)
        table.add_row(str(i), escape(prompt), tokens, f"{norm:.3f}", escape(weighted))
    console.print(table)
    if len(report.prompts) > 1:
        sim = Table(title="cosine similarity of pooled embeddings")
        sim.add_column("")
        for i in range(len(report.prompts)):
            sim.add_column(str(i), justify="right")
        for i, row in enumerate(report.cosine):
            sim.add_row(str(i), *[f"{c:.3f}" for c in row])
        console.print(sim)

