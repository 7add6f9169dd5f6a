"""Secrets never reach a file or a log: URLs are recorded without credentials.

A base URL may carry a password (`http://user:pass@host/v1`) or a token in its query (`?api_key=...`, a signed
URL's `sig=`, or a name nobody could guess). Everything bonsynth writes (manifests, state, reports) or prints
goes through `redact_url` / `redact`, which drop the userinfo and every query parameter except a few known to
be harmless (`api-version`, `region`, ...), so the record still says which server was used.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that are recorded; every other one's value is treated as a secret.
_SAFE_PARAMS = frozenset({"api-version", "api_version", "version", "region", "model", "deployment", "format"})
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_SECRET_FIELD = re.compile(r"(^|_)(api_?key|token|secret|password|passwd)$")


def redact_url(url: str) -> str:
    """The URL without user:password, keeping only the query parameters known to be harmless."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not a URL we can take apart: keep nothing that could be a secret
        return "<unparsable URL>"
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in _SAFE_PARAMS]
    return urlunsplit((parts.scheme, host, parts.path, urlencode(query), ""))


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL (password, user, secret-looking query values), to mask wherever they echo."""
    try:
        parts = urlsplit(url)
        found = [parts.password or "", parts.username or ""]
    except ValueError:
        return []
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in _SAFE_PARAMS]
    return [s for s in found if s]


def redact_text(text: str) -> str:
    """Every URL inside a message, redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact(obj: Any) -> Any:
    """A copy of a config-like value with URLs redacted and secret-named fields replaced by "<redacted>"."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if isinstance(k, str) and _SECRET_FIELD.search(k.lower()) and v else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str) and "://" in obj:
        return redact_text(obj)
    return obj
