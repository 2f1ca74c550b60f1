"""The CLI's client of the orchestrator's REST API (the API is the only way the CLI changes state)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self

import httpx

from coo.cli.output import CliError
from coo.stack.components import StackSettings


def api_url() -> str:
    return os.environ.get("COO_API_URL") or StackSettings().url(StackSettings().orchestrator_port)


def _token(var: str, default_file: str, *, files: bool = True) -> str | None:
    token = os.environ.get(var, "").strip()
    if token or not files:
        return token or None
    path = Path(os.environ.get(f"{var}_FILE") or (StackSettings().state / "data" / default_file))
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def api_token() -> str | None:
    """COO_API_TOKEN, else the token file the local orchestrator wrote (COO_API_TOKEN_FILE)."""
    return _token("COO_API_TOKEN", "api-token")


def api_read_token() -> str | None:
    """COO_API_READ_TOKEN, else the read-only token file (COO_API_READ_TOKEN_FILE)."""
    return _token("COO_API_READ_TOKEN", "api-read-token")


def cli_token() -> str | None:
    """The token the CLI sends on every call: a token set in the environment (the operator's, else
    the read-only one) before a token file (the operator's, else the read-only one)."""
    return (_token("COO_API_TOKEN", "api-token", files=False) or _token("COO_API_READ_TOKEN", "", files=False)
            or api_token() or api_read_token())


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer`` with :func:`cli_token` (none when there is no token at all)."""
    token = cli_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


class Api:
    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url or api_url()
        self._token = token if token is not None else cli_token()
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, *, hints: dict[int, str] | None = None,
              raw: bool = False, **kwargs: Any) -> Any:
        if not self._token:
            raise CliError("no API token", "set COO_API_TOKEN (or COO_API_READ_TOKEN for reads), or start the local "
                           "stack (`coo up`) which writes them")
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            resp = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.ConnectError:
            raise CliError(f"the orchestrator at {self.base_url} is not reachable",
                           "start the stack with `make up` (or `coo up`), or set COO_API_URL") from None
        except httpx.TimeoutException:
            raise CliError(f"the orchestrator at {self.base_url} did not answer in time",
                           "check `coo status`") from None
        except httpx.TransportError as exc:
            raise CliError(f"the orchestrator at {self.base_url} failed: {type(exc).__name__} {exc}".strip(),
                           "check `coo status` and COO_API_URL") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
                detail = body.get("detail") if isinstance(body, dict) else body
            except ValueError:
                detail = resp.text[:200].strip() or resp.reason_phrase
            if isinstance(detail, list):  # FastAPI validation errors
                detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
            hint = {401: "check COO_API_TOKEN (or the token file of the local stack)",
                    403: "this is the read-only token: changes need the operator's (COO_API_TOKEN)",
                    404: "list missions with `coo missions`",
                    409: "see the mission's state with `coo mission ID`",
                    429: "the system is busy or a budget is exhausted; see `coo status`",
                    **(hints or {})}.get(resp.status_code, "")
            raise CliError(f"{detail} (HTTP {resp.status_code})", hint)
        if raw:
            return resp.content
        try:
            return resp.json()
        except ValueError:
            raise CliError(f"{self.base_url}{path} did not answer JSON (HTTP {resp.status_code})",
                           "is COO_API_URL the orchestrator's address?") from None

    def get(self, path: str, hints: dict[int, str] | None = None, **params: Any) -> Any:
        return self._call("GET", path, hints=hints, params={k: v for k, v in params.items() if v is not None})

    def get_bytes(self, path: str, hints: dict[int, str] | None = None, **params: Any) -> bytes:
        return self._call("GET", path, hints=hints, raw=True,
                          params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict | None = None, hints: dict[int, str] | None = None) -> Any:
        return self._call("POST", path, hints=hints, json=body or {})
