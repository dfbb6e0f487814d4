"""The google-genai SDK's boundary, for every Gemini call qsync makes (embeddings, counts, enrichment).

Each call is made once (the SDK's retries are switched off) and its errors are converted here: 429s, 5xx, timeouts
and dropped connections become TransientError carrying RetryInfo.retryDelay when the answer has one, for the run's
one retry layer (engine.retry). A per-day quota pauses the job; an invalid key stops it; a 400 caused by the content
of a request is raised as InvalidInput so the runner can split the batch and skip just the guilty record. The API
key is read from the environment, handed to the SDK and scrubbed from every message qsync produces.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import threading
from typing import Any

import orjson

from qsync.catalog.models import DEFAULT_EMBEDDING_MODEL
from qsync.errors import (
    ConfigError,
    InvalidInput,
    PauseJob,
    PermanentError,
    QsyncError,
    RateLimited,
    StopJob,
    TransientError,
    billed,
)

_DELAY = re.compile(r"^([\d.]+)s$")


def api_key_from_env() -> str | None:
    return os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY") or None


def key_fingerprint(key: str) -> str:
    """A stand-in for an API key that can be compared and logged without revealing it."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class GeminiClient:
    """The google-genai client with qsync's boundary: SDK retries off, errors converted, the key scrubbed."""

    def __init__(self, timeout_s: float = 60.0, model: str = DEFAULT_EMBEDDING_MODEL) -> None:
        key = api_key_from_env()
        if not key:
            raise ConfigError("Gemini needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)")
        self.model = model.removeprefix("models/")
        self.secret = key
        self._timeout_s = timeout_s
        self._sdk: tuple[Any, Any] | BaseException | None = None
        # The SDK is imported and its client made on a thread (~0.35 s of CPU): a run plans its job meanwhile, its
        # main thread mostly waiting for the checkpoint file's host. The first use waits for it.
        self._making = threading.Thread(target=self._make, name="qsync-genai-import", daemon=True)
        self._making.start()

    def _make(self) -> None:
        try:
            from google import genai
            from google.genai import types

            # Retries are ours (attempts=1 turns the SDK's off); the timeout is per HTTP call, in ms.
            client = genai.Client(
                api_key=self.secret,
                http_options=types.HttpOptions(
                    timeout=int(self._timeout_s * 1000), retry_options=types.HttpRetryOptions(attempts=1)
                ),
            )
            self._sdk = (client, types)
        except BaseException as exc:  # told at the first use
            self._sdk = exc

    def _made(self) -> tuple[Any, Any]:
        self._making.join()
        if isinstance(self._sdk, BaseException):  # no call can be made: the job stops, saying why
            error = self.scrub(f"{type(self._sdk).__name__}: {self._sdk}")
            raise StopJob(f"the Gemini SDK (google-genai) could not start: {error}") from None
        assert self._sdk is not None
        return self._sdk

    @property
    def client(self) -> Any:
        """The SDK's client (genai.Client)."""
        return self._made()[0]

    @property
    def types(self) -> Any:
        """The SDK's `google.genai.types`."""
        return self._made()[1]

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST `body` as it is through the SDK's own transport (its key, base URL, timeout and errors), answered
        as JSON; None when this version of the SDK has no such transport, takes or answers it in another shape, or
        talks to Vertex AI (other paths): the caller then uses the public method. For free requests only
        (countTokens): a public method called after a surprise here must not pay twice.

        Why: the public `count_tokens` turns each text into pydantic models and back before sending the very same
        JSON, ~120 to 200 ms of CPU per 1,000 texts against ~4 ms here (measured with the emulator); a run counts
        every text it embeds, so that was as much of the runner's CPU as the embedding calls themselves."""
        transport = self._transport(path, body)
        if transport is None:
            return None
        try:
            response = transport("post", path, body, None)
        except TypeError:  # another shape after all (a free request: the public method may ask again)
            return None
        return _json_object(response)

    def post_paid(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST a paid request as `post` does; None, having sent nothing, when the SDK's transport is not there to
        take it (`_transport`): the caller then uses the public method. Unlike `post`, nothing that happens once it
        is sent makes the caller ask again: a paid call must not be sent twice. An answer that is not a JSON object
        was billed all the same (a billed PermanentError).

        Why: the public `embed_content` decodes each answer with the standard library's JSON (76,800 floats for
        100 vectors of 768) and turns it into pydantic models: ~30 ms of the runner's CPU a call, half of what a run
        against a fast API spends in its own process; orjson decodes it in ~6 ms (benchmarks/answer_decoding.py)."""
        transport = self._transport(path, body)
        if transport is None:
            return None
        response = transport("post", path, body, None)
        parsed = _json_object(response)
        if parsed is None:
            kind = type(getattr(response, "body", response)).__name__
            raise billed(PermanentError(f"Gemini {path}: the answer is not a JSON object ({kind})"))
        return parsed

    def _transport(self, path: str, body: dict[str, Any]) -> Any:
        """The SDK's own transport (`request(method, path, body, options)`) if it is there and takes these arguments,
        judged before anything is sent (its signature); None for another version of the SDK, or Vertex AI."""
        api_client = getattr(self.client, "_api_client", None)
        transport = getattr(api_client, "request", None)
        if not callable(transport) or getattr(api_client, "vertexai", False):
            return None
        try:
            inspect.signature(transport).bind("post", path, body, None)
        except (TypeError, ValueError):
            return None
        return transport

    def call(self, fn: Any, what: str) -> Any:
        self._made()  # an SDK that could not start stops the job here, before anything of it is imported
        from google.genai import errors as genai_errors

        try:
            return fn()
        except genai_errors.APIError as exc:
            raise self._convert_api_error(exc, what) from None
        except Exception as exc:  # httpx timeouts and dropped connections, and anything else from the wire
            name = type(exc).__name__
            if any(k in name for k in ("Timeout", "Connect", "Protocol", "Network", "ReadError", "WriteError")):
                # A refused connection never reached Google; a timeout or a dropped answer may have been billed.
                billed = not name.startswith("Connect")
                raise TransientError(f"Gemini {what}: {name}: {self.scrub(str(exc))}", maybe_billed=billed) from None
            raise

    def _convert_api_error(self, exc: Any, what: str) -> QsyncError:
        code = int(getattr(exc, "code", 0) or 0)
        status = str(getattr(exc, "status", "") or "")
        message = self.scrub(str(getattr(exc, "message", "") or exc))
        details = _details(exc)
        text = f"Gemini {what} answered {code} {status}: {message}"
        if code == 429:
            quota_ids = [v.get("quotaId", "") for d in details for v in d.get("violations", []) or []]
            if any("PerDay" in q for q in quota_ids):
                return PauseJob(
                    f"the Gemini per-day quota is used up ({', '.join(quota_ids)}); the job is paused — "
                    "resume it once the quota resets (midnight Pacific time) or with another project's key"
                )
            return RateLimited(text, _retry_delay(details))
        reasons = {d.get("reason") for d in details}
        if "API_KEY_INVALID" in reasons or code in (401, 403) or status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return StopJob(f"Gemini refused the API key ({message}); set a valid GEMINI_API_KEY and resume the job")
        if code == 404:
            return StopJob(f"Gemini does not know model {self.model!r} ({message})")
        if code == 408 or code >= 500:
            return TransientError(text, _retry_delay(details))
        if code == 400:
            return InvalidInput(text)
        return PermanentError(text)

    def scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text


def _json_object(response: Any) -> dict[str, Any] | None:
    """The answer the SDK's transport returned (its body, JSON, read with orjson), if it is a JSON object."""
    answer = response if isinstance(response, dict) else getattr(response, "body", None)
    if isinstance(answer, (str, bytes)):
        try:
            answer = orjson.loads(answer)
        except orjson.JSONDecodeError:
            return None
    return answer if isinstance(answer, dict) else None


def _details(exc: Any) -> list[dict[str, Any]]:
    body = getattr(exc, "details", None)
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return []
    if isinstance(body, dict):
        found = body.get("error", body).get("details", [])
        return [d for d in found if isinstance(d, dict)]
    return []


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    for detail in details:
        if detail.get("@type", "").endswith("google.rpc.RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
