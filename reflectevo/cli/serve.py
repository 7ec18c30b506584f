"""`reflectevo serve`: an OpenAI-compatible server for a model preset."""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors


@friendly_errors
def serve_cmd(model: str = typer.Option("", "--model", help="preset to serve (default: the params' model)"),
              params: Path = typer.Option(Path("params.yaml"), "--params"),
              host: str = typer.Option("127.0.0.1", "--host"),
              port: int = typer.Option(8000, "--port", help="0 = any free port (printed)"),
              adapter: list[Path] = typer.Option([], "--adapter", help="a LoRA adapter folder to serve beside the "
                                                 "base, under its served name (repeatable)"),
              served_name: str = typer.Option("", "--served-model-name", help="default: the preset's hub_id, else its name"),
              api_key: str = typer.Option("", "--api-key", envvar="REFLECTEVO_SERVE_API_KEY",
                                          help="require this bearer key (default: none)"),
              verbose: bool = typer.Option(False, "--verbose", help="log every request")) -> None:
    """Serve a preset over an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models)."""
    from reflectevo.config.params import read_params
    from reflectevo.config.presets import load_preset
    from reflectevo.serve import make_server

    name, preset = load_preset(read_params(params), model or None, where="--model")
    server = make_server(name, preset, host=host, port=port, adapters=adapter, model_name=served_name or None,
                         api_key=api_key or None, quiet=not verbose)
    typer.echo(f"serving {', '.join(map(repr, server.backends))} at {server.url} (OPENAI_BASE_URL={server.url}); Ctrl-C stops", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
