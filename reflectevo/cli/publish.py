"""`reflectevo publish`: upload a trained setting or the curated sets to the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from reflectevo.stage import friendly_errors


@friendly_errors
def publish_cmd(folder: Path = typer.Argument(..., help="models/<setting> or data/curated"),
                repo_id: str = typer.Option(..., "--repo-id", help="owner/name on the Hub"),
                kind: str | None = typer.Option(None, "--kind", help="model | dataset (default: from the folder)"),
                public: bool = typer.Option(False, "--public", help="make a new repo public (default: private)"),
                dataset_repo: str | None = typer.Option(None, "--dataset-repo",
                                                        help="the curated sets' repo, for the model card's datasets:"),
                revision: str | None = typer.Option(None, "--revision", help="branch to commit to (default: main)"),
                message: str | None = typer.Option(None, "--message", help="commit message"),
                dry_run: bool = typer.Option(False, "--dry-run", help="check and list the files; send nothing")) -> None:
    """Check a folder (a Hub card, no "no training data", no absolute paths) and upload it: create_repo + upload_folder.
    The token comes from HF_TOKEN or `hf auth login`; the endpoint from HF_ENDPOINT."""
    from reflectevo.publish import publish

    done = publish(folder, repo_id, kind=kind, public=public, dataset_repo=dataset_repo, revision=revision,
                   commit_message=message, dry_run=dry_run)
    typer.echo(json.dumps(done, indent=2))


def register(app: typer.Typer) -> None:
    app.command("publish")(publish_cmd)
