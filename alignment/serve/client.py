"""Client of the reward server: ``RewardClient(url)(prompts, completions, **columns) -> list of floats``.

POST ``{url}/score`` with ``{"prompts": [...], "completions": [...], "columns": {name: [...]}}``; the reply
must be ``{"scores": [one finite number per completion]}``. Each data-parallel rank calls it with its own rows.

Failures are errors naming the URL, never a silent zero reward: a refused connection, a timeout and an HTTP
5xx are retried ``retries`` times (``backoff`` seconds, doubling); a reply that is not JSON, lacks ``scores``,
has the wrong length or holds a non-number / NaN / inf, and an HTTP 4xx, fail at once.
"""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.error
import urllib.request
from typing import Any, List, Sequence

__all__ = ["RewardClient", "RewardServerError", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8731"


class RewardServerError(ConnectionError):
    """The reward server could not be reached or gave an unusable answer (the message names the URL)."""


def _jsonable(values: Sequence[Any]) -> list:
    return [v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for v in values]


class RewardClient:
    """Scores completions on a reward server (see the module docstring)."""

    def __init__(self, url: str = DEFAULT_URL, *, timeout: float = 30.0, retries: int = 2, backoff: float = 0.5):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reward_server_url must start with http:// or https://, got '{url}'")
        if timeout <= 0 or retries < 0:
            raise ValueError(f"reward server client: timeout must be > 0 and retries >= 0; got {timeout}, {retries}")
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)

    def health(self) -> dict:
        """GET {url}/health (one attempt)."""
        return self._parse(self._request("/health", None), "/health")

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> List[float]:
        body = {"prompts": list(prompts), "completions": list(completions),
                "columns": {k: _jsonable(v) for k, v in columns.items() if isinstance(v, (list, tuple))}}
        data = json.dumps(body).encode("utf-8")
        reply = self._parse(self._with_retries("/score", data), "/score")
        scores = reply.get("scores") if isinstance(reply, dict) else None
        where = f"reward server {self.url}/score"
        if not isinstance(scores, list):
            raise RewardServerError(f"{where}: the reply has no 'scores' list")
        if len(scores) != len(completions):
            raise RewardServerError(f"{where}: returned {len(scores)} scores for {len(completions)} completions")
        out = []
        for i, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise RewardServerError(f"{where}: score {i} is not a number ({s!r})")
            if not math.isfinite(s):
                raise RewardServerError(f"{where}: score {i} is {s} (not finite)")
            out.append(float(s))
        return out

    # ------------------------------------------------------------------ transport
    def _request(self, path: str, data) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return resp.read()

    def _with_retries(self, path: str, data) -> bytes:
        where = f"reward server {self.url}{path}"
        delay, last = self.backoff, ""
        for attempt in range(self.retries + 1):
            try:
                return self._request(path, data)
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                if e.code < 500:
                    raise RewardServerError(f"{where}: HTTP {e.code} ({detail})") from None
                last = f"HTTP {e.code} ({detail})"
            except (socket.timeout, TimeoutError):
                last = f"no reply within {self.timeout:g}s"
            except urllib.error.URLError as e:
                reason = e.reason
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    last = f"no reply within {self.timeout:g}s"
                elif isinstance(reason, ConnectionRefusedError):
                    last = "connection refused (is `python -m alignment.serve.reward` running?)"
                else:
                    last = str(reason)
            except (ConnectionError, OSError) as e:
                last = str(e) or type(e).__name__
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise RewardServerError(f"{where}: {last} ({self.retries + 1} attempts)")

    def _parse(self, raw: bytes, path: str):
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, json.JSONDecodeError):
            head = raw[:60].decode("utf-8", "replace")
            raise RewardServerError(f"reward server {self.url}{path}: the reply is not JSON ({head!r})") from None
        except ValueError as e:
            raise RewardServerError(f"reward server {self.url}{path}: {e}") from None


def _reject_constant(name: str):
    raise ValueError(f"the reply holds {name} (not a finite number)")
