"""Hub presets: the local Hugging Face cache first, then one short request, then one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from reflectevo.config.presets import ModelPreset
from reflectevo.errors import ReflectEvoError

HUB_TIMEOUT_S = 5.0     # the probe's limit unless $HF_HUB_ETAG_TIMEOUT says otherwise


def hub_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_TIMEOUT_S)
    except ValueError:
        return HUB_TIMEOUT_S


def _missing_files(folder: Path, weights: bool) -> str:
    """'' when `folder` holds what loading needs (tokenizer; with `weights`, config and every weight file)."""
    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return "no tokenizer files"
    if not weights:
        return ""
    if not (folder / "config.json").exists():
        return "no config.json"
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).exists():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return f"unreadable {index}"
            lacking = sorted(s for s in shards if not (folder / s).exists())
            if not lacking:
                return ""
            return f"lacks {', '.join(lacking[:2])}" + (f" and {len(lacking) - 2} more" if len(lacking) > 2 else "")
    if any((folder / f).exists() for f in ("model.safetensors", "pytorch_model.bin")):
        return ""
    return "no weight files"


def cached_snapshot(hub_id: str, revision: str, weights: bool = True) -> tuple[str | None, str]:
    """(folder, '') when the local HF cache has a usable snapshot of `hub_id@revision`, else (None, why not).

    No network: huggingface_hub's own cache lookup (`snapshot_download(local_files_only=True)`), then a
    check that the files loading needs are all there (a download cut short leaves a partial snapshot)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError

    try:
        folder = Path(snapshot_download(hub_id, revision=revision, local_files_only=True))
    except HFValidationError as e:
        raise ReflectEvoError(f"hub_id {hub_id!r} is not a valid Hugging Face repo id ({e})") from None
    except IncompleteSnapshotError:
        return None, "incomplete"
    except OSError:  # LocalEntryNotFoundError: no snapshot of this revision
        return None, "not there"
    missing = _missing_files(folder, weights)
    return (None, f"incomplete: {missing}") if missing else (str(folder), "")


def probe_hub(hub_id: str, revision: str, timeout: float | None = None) -> str:
    """'' when the hub answers for `hub_id@revision` (its config.json), else a short reason.

    One HEAD request without retries, capped at `timeout` seconds (default `hub_timeout()`) even where
    name resolution hangs: it runs in a daemon thread that is abandoned at the deadline."""
    import threading

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    timeout = hub_timeout() if timeout is None else timeout
    endpoint = constants.ENDPOINT
    url = hf_hub_url(hub_id, "config.json", revision=revision)  # on $HF_ENDPOINT
    outcome: dict[str, Exception | None] = {}

    def head() -> None:
        try:
            get_hf_file_metadata(url, timeout=timeout, retry_on_errors=False)
            outcome["error"] = None
        except Exception as e:  # noqa: BLE001 - any failure is the reason reported below
            outcome["error"] = e

    thread = threading.Thread(target=head, name="reflectevo-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if "error" not in outcome:
        return f"{endpoint} gave no answer within {timeout:g} s"
    err = outcome["error"]
    if err is None:
        return ""
    if isinstance(err, GatedRepoError):
        return f"{endpoint}: {hub_id} is gated (accept its licence on the hub, then `hf auth login` or HF_TOKEN)"
    if isinstance(err, RepositoryNotFoundError):
        return f"{endpoint}: no repo {hub_id} (or a private one: log in with `hf auth login` or HF_TOKEN)"
    if isinstance(err, RevisionNotFoundError):
        return f"{endpoint}: {hub_id} has no revision {revision}"
    if isinstance(err, RemoteEntryNotFoundError):
        return f"{endpoint}: {hub_id}@{revision} has no config.json (not a transformers model)"
    if isinstance(err, HfHubHTTPError) and getattr(err, "response", None) is not None:
        return f"{endpoint} answered HTTP {err.response.status_code}"
    detail = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{endpoint} unreachable ({type(err).__name__}{': ' + detail if detail else ''})"


def hub_unavailable(name: str, preset: ModelPreset, hub: str, cache: str) -> ReflectEvoError:
    """The one line a user sees when a hub preset can be loaded from nowhere: what was tried, and the fix."""
    from huggingface_hub import constants

    return ReflectEvoError(
        f"models.{name}: cannot load {preset.hub_id} at revision {preset.revision}. Tried: path: not set; "
        f"local HF cache {constants.HF_HUB_CACHE}: {cache}; hub: {hub}. Fix: a local copy through `path:` "
        f"(dvc exp run -S models.{name}.path=/local/folder, a save_pretrained folder), or HF_HOME=<a folder whose "
        f"Hugging Face cache has this revision> with HF_HUB_OFFLINE=1")


def resolve_hub(name: str, preset: ModelPreset, weights: bool = True) -> str:
    """The local snapshot folder of a hub preset, else its hub id if the hub has it, else one clear error."""
    from huggingface_hub import constants

    revision = preset.revision or "main"
    folder, cache = cached_snapshot(preset.hub_id, revision, weights)
    if folder:
        return folder
    if constants.HF_HUB_OFFLINE:
        raise hub_unavailable(name, preset, "skipped (HF_HUB_OFFLINE=1)", cache)
    problem = probe_hub(preset.hub_id, revision)
    if problem:
        raise hub_unavailable(name, preset, problem, cache)
    return preset.hub_id
