"""A local emulator of the Gemini REST API, for tests, benchmarks and rehearsals. Never used in a real run.

    emu = GeminiEmulator(latency_s=0.3, texts_per_minute=3000, tokens_per_minute=1_000_000).start()
    os.environ["GOOGLE_GEMINI_BASE_URL"] = emu.url      # the google-genai SDK honours it
    emu.stop(); emu.texts_embedded                       # every text it embedded, counted

It answers what qsync's Gemini code calls (batchEmbedContents, embedContent, countTokens, generateContent, Batch
Mode's asyncBatchEmbedContent, batches/{id} and the list of batches: testing.batch_jobs), under /v1 and /v1beta,
as gemini_model describes the models.
Faults are real HTTP answers shaped like Google's: 429 with or without RetryInfo, a per-day quota 429, 5xx at a
set rate, 400 API_KEY_INVALID, 400 for requests over the limits (100 texts, 4 MiB, a text over the model's token
limit), answers slower than a client's timeout, and connections closed without an answer.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from qsync.testing.batch_jobs import BatchJobs
from qsync.testing.gemini_model import (  # noqa: F401 (TOKENS_PER_IMAGE, media_key, worded_vector: for tests)
    INSTRUCTION_MODELS,
    MAX_REQUEST_BYTES,
    MAX_TEXTS_PER_REQUEST,
    MAX_TOKENS_PER_TEXT,
    MEDIA_PRICES,
    MODEL_PRICES,
    MODEL_TOKEN_LIMITS,
    TOKEN,
    TOKENS_PER_IMAGE,
    Input,
    answer_json,
    answer_values,
    count_tokens,
    emulated_vector,
    encode_answer,
    error_body,
    media_key,
    read_input,
    worded_vector,
)

Query = dict[str, list[str]]
OFFLINE_KEY = "offline-emulator-key"  # what start_offline sets: not a secret, and no Google key looks like it


STATS_PATH = "/emulator/stats"  # counters for a client in another process (benchmarks); not a Gemini method


_ROUTE = re.compile(r"^/(v1|v1beta)/(models/[^:/]+|batches/[^:/]+|batches)(?::(\w+))?$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that was killed or gave up mid-request: expected in crash tests, not news
        super().handle_error(request, client_address)


@dataclass
class GeminiEmulator:
    api_key: str = "test-key"
    latency_s: float = 0.0
    texts_per_minute: int | None = None
    tokens_per_minute: int | None = None
    texts_per_day: int | None = None
    retry_info_share: float = 1.0  # share of rate-limit 429s that carry RetryInfo
    server_error_rate: float = 0.0  # share of requests answered 500/503
    slow_rate: float = 0.0  # share of requests answered after `slow_s` (beyond a client's timeout)
    slow_s: float = 5.0
    reset_rate: float = 0.0  # share of requests whose connection is closed without an answer
    usage_metadata: bool = True  # whether embed answers carry usageMetadata
    # The key of gemini-embedding-2's per-modality usage: Google's reference says promptTokenDetails (which
    # google-genai drops); the SDK reads promptTokensDetails. Which one the live API sends is unknown.
    usage_detail_key: str = "promptTokenDetails"
    # "random": each input's vector is noise seeded by its content (tests recompute it: emulated_vector).
    # "words": vectors follow the words of the input's text (worded_vector), so an offline search finds
    # the records whose captions share the query's words (notebook 04 without a key).
    vectors: str = "random"
    poison: tuple[str, ...] = ()  # a text containing one of these is refused with 400
    seed: int = 0
    batch_job_seconds: float = 0.5  # how long a Batch Mode job stays RUNNING
    window_s: float = 60.0
    host: str = "127.0.0.1"
    port: int = 0

    # Counters a test reads.
    texts_embedded: Counter[str] = field(default_factory=Counter)
    tokens_metered: int = 0
    tokens_by_model: Counter[str] = field(default_factory=Counter)
    tokens_by_modality: Counter[str] = field(default_factory=Counter)
    usd_metered: float = 0.0  # what the tokens cost at each model's price (Batch Mode at its price)
    task_types_ignored: int = 0  # requests to an instruction model that carried a taskType anyway
    received: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=500))  # recent embed requests
    requests: Counter[str] = field(default_factory=Counter)
    in_progress: Counter[str] = field(default_factory=Counter)  # requests received and not yet answered

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(self.seed)
        self._window: deque[tuple[float, int, int]] = deque()  # (time, texts, tokens) of accepted requests
        self._day_texts = 0
        self._admitted: list[float] = []  # (first, last) time a request was admitted, and texts before the last
        self.batch_jobs = BatchJobs(functools.partial(self._meter, batch_mode=True), lambda: self.batch_job_seconds)
        self._server: ThreadingHTTPServer | None = None
        self.hooks: list[Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]] | None]] = []

    def _words(self, text: str) -> str | None:
        return text if self.vectors == "words" else None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> GeminiEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def do_POST(self) -> None:
                emulator._handle(self, "POST")

            def do_GET(self) -> None:
                emulator._handle(self, "GET")

        self._server = _Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        # stop() waits for the serving loop to look at its shutdown flag: every 50 ms, not the default 0.5 s.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
        threading.Thread(target=serve, name="gemini-emulator", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GeminiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """The counters as JSON-ready numbers (also served at GET /emulator/stats)."""
        with self._lock:
            counts = list(self.texts_embedded.values())
            return {
                "requests": dict(self.requests),
                "in_progress": {verb: n for verb, n in self.in_progress.items() if n},
                "texts_embedded": sum(counts),
                "distinct_texts": len(counts),
                "texts_embedded_twice": sum(c - 1 for c in counts if c > 1),
                "tokens_metered": self.tokens_metered,
                # from the first admitted embed request to the last, and the texts admitted before the last one:
                # the rate the API saw (no process start-up in it)
                "admitted_span_s": self._admitted[1] - self._admitted[0] if self._admitted else 0.0,
                "texts_before_last": int(self._admitted[2]) if self._admitted else 0,
            }

    def reset_day(self) -> None:
        """The per-day quota clears (as it would at midnight Pacific time)."""
        with self._lock:
            self._day_texts = 0

    # -- request handling ------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path, _, query = handler.path.partition("?")
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        if method == "GET" and path == STATS_PATH:
            return self._send(handler, 200, self.stats())
        match = _ROUTE.match(path)
        if match is None:
            return self._send(handler, 404, error_body(404, "NOT_FOUND", f"no such method {path}"))
        _, resource, verb = match.groups()
        verb = verb or ("list" if resource == "batches" else "get" if method == "GET" else "post")
        with self._lock:
            self.requests[verb] += 1
            self.in_progress[verb] += 1
            fate = self._random.random()
        try:
            return self._respond(handler, raw, resource, verb, fate, parse_qs(query))
        finally:
            with self._lock:
                self.in_progress[verb] -= 1

    def _respond(
        self, handler: BaseHTTPRequestHandler, raw: bytes, resource: str, verb: str, fate: float, query: Query
    ) -> None:
        if handler.headers.get("x-goog-api-key") != self.api_key:
            return self._send(handler, 400, error_body(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                  "domain": "googleapis.com"}],
            ))  # fmt: skip
        if fate < self.reset_rate:
            handler.close_connection = True
            handler.connection.close()  # no answer at all: the client sees a dropped connection
            return None
        if self.latency_s:
            time.sleep(self.latency_s)
        if fate < self.reset_rate + self.slow_rate:
            time.sleep(self.slow_s)
        if fate < self.reset_rate + self.slow_rate + self.server_error_rate:
            code, status = (503, "UNAVAILABLE") if fate * 1000 % 2 < 1 else (500, "INTERNAL")
            return self._send(handler, code, error_body(code, status, "The service is currently unavailable."))
        if len(raw) > MAX_REQUEST_BYTES:
            return self._send(
                handler, 400, error_body(400, "INVALID_ARGUMENT", "Request payload size exceeds the limit")
            )
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._send(handler, 400, error_body(400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
        for hook in self.hooks:
            answer = hook(verb, body)
            if answer is not None:
                return self._send(handler, *answer)
        model = resource.removeprefix("models/")
        if verb in ("batchEmbedContents", "embedContent"):
            requests = body.get("requests") if verb == "batchEmbedContents" else [body]
            return self._send(handler, *self._embed(model, requests or [], single=verb == "embedContent"))
        if verb == "countTokens":
            texts = [p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", [])]
            return self._send(handler, 200, {"totalTokens": sum(count_tokens(t) for t in texts)})
        if verb == "generateContent":
            return self._send(handler, *self._generate(body))
        if verb == "asyncBatchEmbedContent":
            return self._send(handler, *self.batch_jobs.create(model, body))
        if verb == "get" and resource.startswith("batches/"):
            return self._send(handler, *self.batch_jobs.get(resource))
        if verb == "list":
            size, token = int((query.get("pageSize") or ["50"])[0]), (query.get("pageToken") or [""])[0]
            return self._send(handler, *self.batch_jobs.list(size, token or None))
        return self._send(handler, 404, error_body(404, "NOT_FOUND", f"no such method {verb}"))

    def _embed(self, model: str, requests: list[dict[str, Any]], single: bool = False) -> tuple[int, dict[str, Any]]:
        if len(requests) > MAX_TEXTS_PER_REQUEST:
            return 400, error_body(
                400, "INVALID_ARGUMENT", "* BatchEmbedContentsRequest.requests: at most 100 requests"
            )
        inputs = [read_input(model, r) for r in requests]
        limit = MODEL_TOKEN_LIMITS.get(model, MAX_TOKENS_PER_TEXT)
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                return 400, error_body(400, "INVALID_ARGUMENT", f"* BatchEmbedContentsRequest.requests[{i}]: {item}")
            if any(p in item.text for p in self.poison):
                return 400, error_body(400, "INVALID_ARGUMENT", f"* BatchEmbedContentsRequest.requests[{i}]: "
                                   "content contains an unsupported sequence")  # fmt: skip
            # The limit counts the whole input, across modalities.
            if item.tokens.total() > limit:
                return 400, error_body(400, "INVALID_ARGUMENT", f"* BatchEmbedContentsRequest.requests[{i}]: input "
                                   f"token count is {item.tokens.total()} but the model supports up to {limit}")  # fmt: skip
        read = [i for i in inputs if isinstance(i, Input)]
        texts = [i.key for i in read]
        modalities = sum((i.tokens for i in read), Counter[str]())
        with self._lock:
            self.received.extend({**r, "resource": model} for r in requests)  # as sent, + whose URL
            if model in INSTRUCTION_MODELS:
                self.task_types_ignored += sum(1 for r in requests if "taskType" in r or "task_type" in r)
        tokens = modalities.total()
        limited = self._admit(len(texts), tokens)
        if limited is not None:
            return limited
        embeddings = [
            {"values": answer_json(model, i.key, r.get("outputDimensionality"), self._words(i.text))}
            for i, r in zip(read, requests, strict=True)
        ]
        self._meter(model, texts, tokens, batch_mode=False, modalities=modalities)
        # embedContent answers one `embedding`; batchEmbedContents a list of `embeddings`.
        answer: dict[str, Any] = {"embedding": embeddings[0]} if single else {"embeddings": embeddings}
        if self.usage_metadata:
            usage: dict[str, Any] = {"promptTokenCount": tokens, "totalTokenCount": tokens}
            if model in INSTRUCTION_MODELS:  # EmbeddingUsageMetadata: the documented (singular) name
                usage[self.usage_detail_key] = [{"modality": m, "tokenCount": n} for m, n in sorted(modalities.items())]
            answer["usageMetadata"] = usage
        return 200, answer

    def _meter(
        self, model: str, texts: list[str], tokens: int, *, batch_mode: bool, modalities: Counter[str] | None = None
    ) -> None:
        by_modality = modalities or Counter({"TEXT": tokens})
        usd = 0.0
        for modality, n in by_modality.items():
            standard, batch = MEDIA_PRICES.get(modality) or MODEL_PRICES.get(model, (0.0, 0.0))
            usd += n * (batch if batch_mode else standard) / 1e6
        with self._lock:
            self.tokens_by_modality.update(by_modality)
            self.texts_embedded.update(texts)
            self.tokens_metered += tokens
            self.tokens_by_model[model] += tokens
            self.usd_metered += usd

    def _admit(self, texts: int, tokens: int) -> tuple[int, dict[str, Any]] | None:
        """Per-minute (sliding window) and per-day limits; each text counts as one request, as on Gemini."""
        now = time.monotonic()
        with self._lock:
            if self.texts_per_day is not None and self._day_texts + texts > self.texts_per_day:
                self.requests["429-day"] += 1
                return 429, error_body(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota (per day).", [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/embed_content_requests",
                        "quotaId": "EmbedContentRequestsPerDayPerProjectPerModel"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43200s"},
                ])  # fmt: skip
            while self._window and self._window[0][0] <= now - self.window_s:
                self._window.popleft()
            used_texts = sum(w[1] for w in self._window)
            used_tokens = sum(w[2] for w in self._window)
            over_texts = self.texts_per_minute is not None and used_texts + texts > self.texts_per_minute
            over_tokens = self.tokens_per_minute is not None and used_tokens + tokens > self.tokens_per_minute
            if over_texts or over_tokens:
                self.requests["429"] += 1
                wait = max(1, math.ceil(self._window[0][0] + self.window_s - now)) if self._window else 1
                details: list[dict[str, Any]] = [{
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/embed_content_requests",
                        "quotaId": "EmbedContentRequestsPerMinutePerProjectPerModel"
                        if over_texts else "EmbedContentInputTokensPerMinutePerProjectPerModel"}]},
                ]  # fmt: skip
                if self._random.random() < self.retry_info_share:
                    details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait}s"})
                return 429, error_body(
                    429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", details
                )
            self._window.append((now, texts, tokens))
            self._admitted = [self._admitted[0] if self._admitted else now, now, self._day_texts]
            self._day_texts += texts
        return None

    def _generate(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        prompt = "".join(p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", []))
        words = TOKEN.findall(prompt)
        answer = " ".join(words[-12:]) if words else "empty"  # deterministic: the prompt's last words
        longest = body.get("generationConfig", {}).get("maxOutputTokens")
        while longest and count_tokens(answer) > longest and " " in answer:  # cut, as Google cuts at the cap
            answer = answer.rsplit(" ", 1)[0]
        prompt_tokens, answer_tokens = count_tokens(prompt), count_tokens(answer)
        with self._lock:
            self.tokens_metered += prompt_tokens + answer_tokens
            self.requests["generated"] += 1
        return 200, {
            "candidates": [{"content": {"role": "model", "parts": [{"text": answer}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": answer_tokens,
                              "totalTokenCount": prompt_tokens + answer_tokens},
        }  # fmt: skip

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = encode_answer(body)
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", "application/json; charset=UTF-8")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to answer
