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
              max_body_mb: float = typer.Option(8.0, "--max-body-mb", min=0.001,
                                                help="largest request body in MiB; larger: 413, unread"),
              max_in_flight: int = typer.Option(32, "--max-in-flight", min=1,
                                                help="completion requests admitted at once (one generates, the "
                                                "others wait); beyond: 503 with Retry-After"),
              max_prompts: int = typer.Option(64, "--max-prompts", min=1,
                                              help="prompts in one /v1/completions request; more: 400"),
              read_timeout: float = typer.Option(60.0, "--read-timeout", min=0.001,
                                                 help="seconds a request body may take to arrive (408), and an "
                                                 "idle connection stays open"),
              verbose: bool = typer.Option(False, "--verbose", help="log every request")) -> None:
    """Serve a preset over an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models).

    A prompt must fit the preset's max_length (prompt + completion tokens): a longer one, or a max_tokens
    that leaves it no room, gets 400 before it is tokenized further than that. See docs/serve.md."""
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import read_params
    from reflectevo.serve import MIB, Limits, make_server

    name, preset = load_preset(read_params(params), model or None, where="--model")
    limits = Limits(max_body_bytes=int(max_body_mb * MIB), max_in_flight=max_in_flight, max_prompts=max_prompts,
                    read_timeout=read_timeout)
    server = make_server(name, preset, host=host, port=port, adapters=adapter, model_name=served_name or None,
                         api_key=api_key or None, quiet=not verbose, limits=limits)
    typer.echo(f"serving {', '.join(map(repr, server.backends))} at {server.url} (OPENAI_BASE_URL={server.url}); Ctrl-C stops",
               err=True)
    typer.echo(f"limits: context {preset.max_length} tokens (models.{name}.max_length), body {max_body_mb:g} MiB, "
               f"{max_in_flight} requests in flight, {max_prompts} prompts per request, read timeout {read_timeout:g} s",
               err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
