"""`diffgen serve`: one loaded model answering AUTOMATIC1111's API, OpenAI's images API and a page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diffgen.cli.app import app
from diffgen.cli.common import CheckpointOption, DebugOption, ThreadsOption, user_errors
from diffgen.serve.options import API_KEY_ENV, DEFAULT_HOST, DEFAULT_MAX_BODY_MB, DEFAULT_PORT, DEFAULT_QUEUE_SIZE


@app.command()
def serve(
    checkpoint: CheckpointOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but this machine (127.0.0.1, ::1, "
                                           "localhost) needs --api-key or --api-auth.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on (AUTOMATIC1111's by default).")] = DEFAULT_PORT,
    models: Annotated[Optional[Path], typer.Option(
        help="A folder of .safetensors checkpoints that clients may choose by name (the file's stem), "
             "besides 'default' and the -c checkpoint.", show_default=False)] = None,
    api_key: Annotated[Optional[str], typer.Option(
        envvar=API_KEY_ENV, help=f"Require this key (Authorization: Bearer KEY, or as the basic-auth password). "
                                 f"Also read from ${API_KEY_ENV}.", show_default=False)] = None,
    api_auth: Annotated[Optional[str], typer.Option(
        help="Require HTTP basic auth with USER:PASSWORD (AUTOMATIC1111's --api-auth).", show_default=False)] = None,
    queue_size: Annotated[int, typer.Option(help="Requests that may wait; more are answered 429.")]
    = DEFAULT_QUEUE_SIZE,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body in MB; larger ones get 413.")]
    = DEFAULT_MAX_BODY_MB,
    inputs: Annotated[Optional[Path], typer.Option(
        help="Where pictures sent to img2img are kept, by SHA-256, so that recipes replay "
             "(default: ~/.cache/diffgen/serve-inputs).", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    threads: ThreadsOption = None,
    debug: DebugOption = False,
) -> None:
    """Serve one loaded model: AUTOMATIC1111's API, OpenAI's images API and a page at /."""
    with user_errors(debug):
        from diffgen.errors import DiffgenError
        from diffgen.serve.options import ServeOptions, checked_options, parse_api_auth

        options = checked_options(ServeOptions(
            host=host, port=port, checkpoint=checkpoint, models=models, inputs=inputs, api_key=api_key,
            api_auth=parse_api_auth(api_auth), queue_size=queue_size, max_body_bytes=int(max_body_mb * 2**20),
            device=device, threads=threads))
        try:
            from diffgen.serve.server import serve as run_server
        except ImportError as exc:
            raise DiffgenError(f"diffgen serve needs the serve extra ({exc.name} is missing): "
                               "pip install 'diffgen[serve]'") from None
        run_server(options, lambda message: typer.echo(message, err=True))
