"""The emulator's Gemini Batch Mode jobs: created by `models/{m}:asyncBatchEmbedContent`, read by `batches/{id}`,
listed by `batches` (pageSize, pageToken), as google-genai's `batches.create_embeddings`, `get` and `list` send
and read them: the job is an operation whose `metadata` holds its displayName, state, times and, once it has
succeeded, its output; a list answers `operations` and, when more remain, `nextPageToken`."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from qsync.testing.gemini_model import answer_values, count_tokens, error_body

Meter = Callable[[str, list[str], int], None]  # (model, texts, tokens), billed at the Batch Mode price
_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"


class BatchJobs:
    """The Batch Mode jobs of one emulator (one project): each RUNNING for `seconds`, then SUCCEEDED."""

    def __init__(self, meter: Meter, seconds: Callable[[], float]) -> None:
        self._meter = meter
        self._seconds = seconds  # how long a job stays RUNNING (the emulator's batch_job_seconds, read each time)
        self._lock = threading.Lock()  # one output, metered once, however many polls arrive together
        self._jobs: dict[str, dict[str, Any]] = {}
        # Called with a job's name the moment it exists, before the client hears of it (a crash test kills the
        # client here: Google has the job, the client never learns its name).
        # builtins.list: this class has a method named `list`, which the annotation would otherwise name
        self.on_created: builtins.list[Callable[[str], None]] = []

    def create(self, model: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        batch = body.get("batch", body)
        requests = batch.get("inputConfig", {}).get("requests", {}).get("requests", [])
        with self._lock:
            name = f"batches/emu-{len(self._jobs) + 1}-{int(time.time() * 1000)}"
            self._jobs[name] = {
                "model": model, "requests": requests, "created": time.monotonic(),
                "display_name": batch.get("displayName"), "create_time": _now(),
            }  # fmt: skip
        for hook in self.on_created:
            hook(name)
        return 200, {"name": name, "metadata": self._state(name)}

    def get(self, name: str) -> tuple[int, dict[str, Any]]:
        if name not in self._jobs:
            return 404, error_body(404, "NOT_FOUND", f"{name} not found")
        return 200, self._operation(name, with_output=True)

    def list(self, page_size: int, page_token: str | None) -> tuple[int, dict[str, Any]]:
        """Newest first, `page_size` at a time; the token is the offset of the next page."""
        with self._lock:
            names = sorted(self._jobs, key=lambda n: self._jobs[n]["created"], reverse=True)
        start = int(page_token or 0)
        page = names[start : start + page_size]
        answer: dict[str, Any] = {"operations": [self._operation(n, with_output=False) for n in page]}
        if start + page_size < len(names):
            answer["nextPageToken"] = str(start + page_size)
        return 200, answer

    def _operation(self, name: str, with_output: bool) -> dict[str, Any]:
        state = self._state(name)
        output = state.pop("output", None)
        done = state["state"] != "BATCH_STATE_RUNNING"
        if with_output and output is not None:
            state["output"] = output
        return {
            "name": name,
            "metadata": state,
            "done": done,
            **({"response": output} if with_output and output else {}),
        }

    def _state(self, name: str) -> dict[str, Any]:
        job = self._jobs[name]
        done = time.monotonic() - job["created"] >= self._seconds()
        state: dict[str, Any] = {
            "@type": _TYPE, "name": name, "model": f"models/{job['model']}", "createTime": job["create_time"],
            "state": "BATCH_STATE_SUCCEEDED" if done else "BATCH_STATE_RUNNING",
        }  # fmt: skip
        if job["display_name"] is not None:
            state["displayName"] = job["display_name"]
        if done:
            with self._lock:
                self._make_output(job)
            state["output"] = {"inlinedEmbedContentResponses": {"inlinedResponses": job["output"]}}
        return state

    def _make_output(self, job: dict[str, Any]) -> None:
        if "output" not in job:
            inner = [r.get("request", r) for r in job["requests"]]
            texts = ["".join(p.get("text", "") for p in r.get("content", {}).get("parts", [])) for r in inner]
            job["output"] = [
                {"response": {"embedding": {"values": answer_values(
                    job["model"], t, r.get("outputDimensionality"))}}, "metadata": r0.get("metadata", {})}
                for t, r, r0 in zip(texts, inner, job["requests"], strict=True)
            ]  # fmt: skip
            self._meter(job["model"], texts, sum(count_tokens(t) for t in texts))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
