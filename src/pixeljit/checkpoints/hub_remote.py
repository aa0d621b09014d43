"""`hf://org/name[@revision]`: a Hugging Face layout folder fetched from the Hub.

Only huggingface_hub's own API downloads (`hf_hub_download` with `revision=`), so its cache,
`HF_HUB_OFFLINE`, `HF_HUB_CACHE` and tokens behave as with any other library. Before a file is
downloaded its size is asked for (`dry_run=True`) and bounded: config.json by a fixed cap, the
weights by what the validated config implies. Every file comes from one commit (the one the
revision pointed to when config.json was resolved). huggingface_hub is optional (the `hub` extra).
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

HF_SCHEME = "hf://"
INSTALL_HINT = "pip install 'pixeljit[hub]'"
LOCAL_ONLY_ERRORS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled")  # huggingface_hub's
# seconds hf_hub_download waits for the Hub to answer each metadata (HEAD) request, its
# `etag_timeout` (its default is 10; HF_HUB_ETAG_TIMEOUT, when set, still takes precedence)
ETAG_TIMEOUT_S = 5
# a Hub repository name part: letters, digits, '.', '_', '-', not starting or ending with
# '.' or '-', at most 96 characters (the Hub's own rule); '--' and '..' are refused as well
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REVISION = r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}"  # a branch, a tag or a commit hash
HF_URI = re.compile(rf"{re.escape(HF_SCHEME)}(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>{_REVISION}))?")


class HubNotInstalledError(ImportError, RuntimeError):
    """huggingface_hub is missing (or too old): an ImportError for library callers, a
    RuntimeError for the command line's one-line error."""


def is_hf_uri(source) -> bool:
    return isinstance(source, str) and source.startswith(HF_SCHEME)


def parse_hf_uri(uri: str) -> tuple[str, str | None]:
    """('org/name', revision or None) of `hf://org/name[@revision]`."""
    match = HF_URI.fullmatch(uri)
    if match is None or any(bad in uri for bad in ("--", "..")):
        raise ValueError(
            f"{uri!r} is not a Hub model name: write {HF_SCHEME}org/name or "
            f"{HF_SCHEME}org/name@revision (a branch, tag or commit)"
        )
    return match["repo"], match["rev"]


def _downloader(uri: str) -> Callable:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise HubNotInstalledError(
            f"{uri}: loading from the Hugging Face Hub needs huggingface_hub: {INSTALL_HINT}"
        ) from None
    if "dry_run" not in inspect.signature(hf_hub_download).parameters:
        import huggingface_hub

        raise HubNotInstalledError(
            f"{uri}: huggingface_hub {huggingface_hub.__version__} cannot tell a file's size "
            f"before downloading it (hf_hub_download(dry_run=)): pip install -U 'pixeljit[hub]'"
        )
    return hf_hub_download


def _offline() -> bool:
    """huggingface_hub's own reading of HF_HUB_OFFLINE (1, true, yes, on), this library's too."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _fetch(uri: str, download: Callable, repo: str, name: str, revision: str | None, **kw):
    """hf_hub_download(repo, name, revision=…), its errors as one line naming `uri`."""
    try:
        return download(repo, name, revision=revision, etag_timeout=ETAG_TIMEOUT_S, **kw)
    except Exception as err:  # huggingface_hub raises many classes (HTTP, offline, cache, ...)
        if not (type(err).__module__.startswith("huggingface_hub") or isinstance(err, OSError)):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        hint = ""
        if type(err).__name__ in LOCAL_ONLY_ERRORS:
            hint = (
                ": it is not in the local Hub cache, and the Hub was not asked (HF_HUB_OFFLINE "
                "is set)"
                if _offline()
                else ": it is not in the local Hub cache, and the Hub could not be reached (with "
                "no network, HF_HUB_OFFLINE=1 skips the retries)"
            )
        raise FileNotFoundError(
            f"{uri}: could not get {name}{hint} ({type(err).__name__}: {first})"
        ) from None


def fetch_hub_folder(
    uri: str,
    config_name: str,
    weights_name: str,
    max_config_bytes: int,
    weights_bound: Callable[[Path], int],
) -> tuple[Path, str]:
    """Download `config_name` (≤ `max_config_bytes`), then `weights_name` (≤
    `weights_bound(config path)`, which validates the config first) from one commit of the
    repository `uri` names. Returns (the snapshot folder holding both, 'hf://org/name@commit')."""
    repo, revision = parse_hf_uri(uri)
    download = _downloader(uri)
    if not _offline():  # said before the first request: without a network it takes a while
        print(f"fetching {uri} from the Hugging Face Hub (HF_HUB_OFFLINE=1 uses only the local "
              "cache)", file=sys.stderr, flush=True)  # fmt: skip
    info = _fetch(uri, download, repo, config_name, revision, dry_run=True)
    _check_size(uri, config_name, info.file_size, max_config_bytes, "a config is a few kB")
    commit = info.commit_hash
    config_path = Path(_fetch(uri, download, repo, config_name, commit))
    bound = weights_bound(config_path)
    info = _fetch(uri, download, repo, weights_name, commit, dry_run=True)
    _check_size(uri, weights_name, info.file_size, bound, "more than its config's parameters")
    weights_path = Path(_fetch(uri, download, repo, weights_name, commit))
    if weights_path.parent != config_path.parent:
        raise ValueError(f"{uri}: {config_name} and {weights_name} came from different folders")
    return config_path.parent, f"{HF_SCHEME}{repo}@{commit}"


def _check_size(uri: str, name: str, size: int | None, bound: int, why: str) -> None:
    if size is not None and size > bound:
        raise ValueError(
            f"{uri}: {name} is {size:,} bytes, over the {bound:,} allowed ({why}): not downloaded"
        )
