"""Hugging Face hub ids versus local paths, and a quick answer when the hub cannot be reached.

A model can be named by a local directory or by a hub id ("name" or "org/name"). A missing local directory
such as `outputs/vae` has the shape of a hub id, and without this check the hub client would retry for about
30 seconds on a machine without network before saying it cannot find the model. `check_hub_id` answers at once:
a name whose first part is a local directory is read as a local path; a cached id is fine; an uncached id
fails straight away when offline mode is on or the hub's host does not accept a connection.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

_TRUE = ("1", "true", "yes", "on")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def looks_like_hub_id(name: str) -> bool:
    """'name' or 'org/name', neither part empty or starting with '.', not absolute and not '~'."""
    parts = name.split("/")
    return (
        len(parts) <= 2
        and all(p and not p.startswith((".", "~")) for p in parts)
        and not os.path.isabs(name)
        and not (os.sep != "/" and os.sep in name)
    )


def offline() -> bool:
    """Offline mode as the hub client and transformers read it (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout_s: float) -> tuple[bool, str]:
    """(True, endpoint) when a TCP connection to the hub's host opens; behind a proxy the answer is always True."""
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if any(os.environ.get(k) for k in _PROXY_VARS):
        return True, endpoint  # the proxy decides; a direct connection says nothing
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True, endpoint
    except OSError as exc:
        return False, f"{endpoint} ({exc})"


def check_hub_id(
    name: str,
    *,
    what: str,
    error: type[Exception] = ValueError,
    subfolder: str | None = None,
    revision: str | None = None,
    timeout_s: float = 5.0,
) -> None:
    """Raise `error` at once, naming `what` and `name`, unless `name` can be loaded from the hub cache or the hub.

    Fine when `name`'s config.json is in the hub cache, or when offline mode is off and the hub's host accepts a
    TCP connection within `timeout_s` (the hub client takes over). Otherwise the error says which of the two
    failed, and, when `name`'s first part is a local directory (`outputs/vae` with `outputs/` present), that
    `name` is also no local directory: most likely a local path that is missing.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    filename = f"{subfolder}/config.json" if subfolder else "config.json"
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    try:
        cached = try_to_load_from_cache(name, filename, cache_dir=cache, revision=revision)
    except ValueError:  # not a valid repo id at all
        cached = None
    if isinstance(cached, str):
        return
    first = name.split("/")[0]
    if "/" in name and Path(first).is_dir():
        head = f"{what} {name!r}: no such directory ({first}/ exists here); as a Hugging Face hub id it is"
    else:
        head = f"{what} {name!r} is not a local directory, and"
    if offline():
        raise error(f"{head} not in the hub cache ({cache}), and HF_HUB_OFFLINE is set")
    ok, where = _hub_reachable(timeout_s)
    if not ok:
        raise error(
            f"{head} not in the hub cache ({cache}), and the Hugging Face hub cannot be reached at {where}; "
            f"give a local directory, or download it where there is network"
        )
