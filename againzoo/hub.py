"""Hugging Face Hub transport: download a checkpoint repo (or find it in the offline cache) and push one.

One ``snapshot_download`` per repo with ``allow_patterns`` (only the files a model needs), honouring
``HF_HUB_OFFLINE``, ``HF_HOME`` / ``HF_HUB_CACHE`` and the usual token; ``push`` commits a run's
selected checkpoint with its records and a generated card in one ``create_commit``. Network, server
and authentication failures become one-line :class:`~againzoo.errors.HubError` /
:class:`~againzoo.errors.CheckpointError` messages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .version import __version__
from .checkpoint import CONFIG, WEIGHTS
from .errors import CheckpointError, HubError

HUB_FILES = (CONFIG, WEIGHTS, "eval.json", "README.md")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str | None:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, read at call time (huggingface_hub reads them at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def network_errors() -> tuple[type[BaseException], ...]:
    """What a Hub call raises when the network, the server or the credentials fail."""
    from huggingface_hub.errors import HfHubHTTPError

    kinds: list[type[BaseException]] = [HfHubHTTPError, OSError, ValueError, TimeoutError]
    # huggingface_hub's HTTP client: httpx (or its httpx2 fork) in 1.x, requests before
    for mod, name in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:
            kinds.append(getattr(__import__(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (Hub errors carry multi-line server replies)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_repo_id(repo_id: str) -> str:
    """``org/name`` as the Hub accepts it, or a one-line :class:`HubError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"invalid Hub repo id {repo_id!r}: {one_line(e)}") from None
    if repo_id.count("/") != 1:
        raise HubError(f"invalid Hub repo id {repo_id!r}: expected org/name")
    return repo_id


def download(repo_id: str, revision: str | None = None, filenames: tuple[str, ...] = HUB_FILES, *,
             cache_dir: str | Path | None = None, token: str | bool | None = None,
             local_files_only: bool | None = None, force_download: bool = False) -> Path:
    """Fetch ``filenames`` of a Hub repo (or find them in the cache) and return the snapshot folder.

    One ``snapshot_download`` with ``allow_patterns``; honours ``HF_HUB_OFFLINE`` (unless
    ``local_files_only`` says otherwise), ``HF_HOME``/``HF_HUB_CACHE`` (unless ``cache_dir``) and
    the usual token locations (unless ``token``).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _offline() if local_files_only is None else local_files_only
    cache = str(cache_dir) if cache_dir is not None else _cache_dir()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(filenames), cache_dir=cache,
                                        local_files_only=offline, token=token, force_download=force_download,
                                        library_name="againzoo", library_version=__version__))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{repo_id} is not in the Hugging Face cache ({cache or 'default'}) and downloading "
                              f"is {'disabled (HF_HUB_OFFLINE=1 or local_files_only)' if offline else 'not possible'}") from None
    except network_errors() as e:
        raise CheckpointError(f"could not fetch Hub repo {repo_id!r}: {one_line(e)}") from None
    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"Hub repo {repo_id} has no {', '.join(missing)}")
    return folder


RUN_FILES = ("recipe.yaml", "metrics.jsonl", "curves.png")


def push(path: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         dry_run: bool = False, token: str | None = None) -> dict[str, Any]:
    """Push a run's selected checkpoint (``best/`` when present) to the Hugging Face Hub.

    Uploads ``model.safetensors``, ``config.json``, ``eval.json``, the run's ``recipe.yaml``,
    ``metrics.jsonl`` and ``curves.png``, and a generated ``README.md`` model card. With
    ``dry_run`` nothing leaves the machine; the returned dict lists the files and the card.
    """

    from .card import load_checkpoint_info, model_card

    check_repo_id(repo_id)
    info = load_checkpoint_info(path)  # requires config.json and eval.json
    wdir, run = info["dir"], Path(path)
    files = {name: wdir / name for name in (CONFIG, WEIGHTS, "eval.json")}
    files.update({name: run / name for name in RUN_FILES if (run / name).exists()})
    missing = [n for n, p in files.items() if not p.exists()]
    if missing:
        raise CheckpointError(f"cannot push {path}: missing {', '.join(missing)}")
    card = model_card(path, repo_id)
    plan = {"repo_id": repo_id, "private": private, "revision": revision,
            "files": sorted([*files, "README.md"]), "sizes": {n: p.stat().st_size for n, p in files.items()},
            "card": card}
    if dry_run:
        return plan
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token, library_name="againzoo", library_version=__version__)
    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p)) for name, p in files.items()]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(repo_id, ops, revision=revision,
                                   commit_message=f"againzoo {__version__}: {info['recipe'].get('name', repo_id)}")
    except network_errors() as e:
        raise HubError(f"push to {repo_id} failed: {one_line(e)}") from None
    plan["commit"] = str(getattr(commit, "commit_url", commit))
    return plan
