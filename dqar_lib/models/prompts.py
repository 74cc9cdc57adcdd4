"""Prompt files: the shipped set (data/prompts/prompts.txt), `.txt` / `.json` / `.jsonl` files, and a prompt file
downloaded once from a URL into a local cache.

    prompts = read_prompts()                                   # the shipped set
    prompts = read_prompts("captions.jsonl", field="caption")  # one JSON object a line
    path = cached_download("https://.../prompts.txt")          # then read_prompts(path)
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path

from ..method.files import PROMPTS, atomic_write, data_file

FORMATS = (".txt", ".json", ".jsonl")


def read_prompts(path: str | Path | None = None, field: str = "prompt") -> list[str]:
    """The prompts in `path` (default: the shipped set): `.txt` one a line (blank lines skipped), `.json` an array
    of strings (or of objects with `field`), `.jsonl` one object a line with `field` (or one string a line).
    A missing, empty or malformed file is a ValueError naming it (and the line, for `.jsonl`)."""
    path = data_file(PROMPTS) if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if path.suffix not in FORMATS:
        raise ValueError(f"prompt file {path} has suffix {path.suffix!r}; expected one of {FORMATS}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"prompt file {path} is not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise ValueError(f"prompt file {path} must hold a JSON array of prompts, got a {type(data).__name__}")
        prompts = [_prompt(x, field, f"{path} item {i}") for i, x in enumerate(data)]
    else:
        prompts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                x = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"prompt file {path} line {n} is not valid JSON: {e}") from None
            prompts.append(_prompt(x, field, f"{path} line {n}"))
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts")
    return prompts


def _prompt(x, field: str, where: str) -> str:
    if isinstance(x, dict):
        if field not in x:
            raise ValueError(f"{where} has no field {field!r} (it has {sorted(x)}); pass --prompt-field")
        x = x[field]
    if not isinstance(x, str) or not x.strip():
        raise ValueError(f"{where} is not a non-empty string prompt: {x!r}")
    return x.strip()


def cache_dir() -> Path:
    """Where downloaded prompt files are kept: $DQAR_CACHE, else ~/.cache/dqar/prompts."""
    return Path(os.environ.get("DQAR_CACHE", Path.home() / ".cache" / "dqar")) / "prompts"


def cached_download(url: str, refresh: bool = False, timeout: float = 30.0, fmt: str | None = None,
                    folder: str | Path | None = None) -> Path:
    """The file at `url`, downloaded once into `folder` (default `cache_dir()`; again with `refresh`); offline, a
    ConnectionError in one sentence naming the URL. The cached name takes the suffix `fmt` gives ("txt", "json" or
    "jsonl"), else the URL's (else .txt), so `read_prompts` knows its format."""
    if fmt is not None and f".{fmt.lstrip('.')}" not in FORMATS:
        raise ValueError(f"prompt file format {fmt!r} is unknown; give one of {', '.join(f[1:] for f in FORMATS)}")
    suffix = f".{fmt.lstrip('.')}" if fmt is not None else Path(url.split("?")[0]).suffix
    suffix = suffix if suffix in FORMATS else ".txt"
    folder = cache_dir() if folder is None else Path(folder).expanduser()
    path = folder / f"{hashlib.sha1(url.encode()).hexdigest()[:16]}{suffix}"
    if path.is_file() and not refresh:
        return path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"could not download the prompt file {url} ({reason}); check the URL, or pass a local "
                              "file with --prompts-file") from None
    with atomic_write(path, "wb") as f:
        f.write(data)
    return path
