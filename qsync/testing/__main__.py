"""`python -m qsync.testing`: run a Gemini emulator to rehearse against (offline), with faults on demand."""

from __future__ import annotations

import time

from qsync.testing.emulator import GeminiEmulator


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m qsync.testing",
        description="Run a local Gemini API emulator until Ctrl-C, to rehearse a backfill and its failures "
        "offline. It prints the two environment variables that point qsync (the google-genai SDK) at it.",
    )
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port; default 8765)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="delay before every answer")
    limits = parser.add_argument_group("rate limits (answered 429 RESOURCE_EXHAUSTED, like Gemini)")
    limits.add_argument("--texts-per-minute", type=int, help="texts a minute before 429s (Gemini tier 1: 3000)")
    limits.add_argument("--tokens-per-minute", type=int, help="tokens a minute before 429s (Gemini tier 1: 1000000)")
    limits.add_argument("--window", type=float, default=60.0, metavar="SECONDS",
                        help="length of the sliding window the per-minute limits count over (default 60)")  # fmt: skip
    limits.add_argument("--retry-info-share", type=float, default=1.0, metavar="SHARE",
                        help="share of 429s that carry RetryInfo.retryDelay (0..1; default 1)")  # fmt: skip
    limits.add_argument("--texts-per-day", type=int,
                        help="a per-day quota: past it, every call is a 429 that waiting minutes does not clear")  # fmt: skip
    faults = parser.add_argument_group("faults (shares of requests, 0..1)")
    faults.add_argument("--server-error-rate", type=float, default=0.0, metavar="SHARE",
                        help="answered 500 INTERNAL or 503 UNAVAILABLE (retried by qsync)")  # fmt: skip
    faults.add_argument("--slow-rate", type=float, default=0.0, metavar="SHARE",
                        help="answered only after --slow seconds (beyond a client's timeout)")  # fmt: skip
    faults.add_argument("--slow", type=float, default=5.0, metavar="SECONDS", help="how slow a slow answer is")
    faults.add_argument("--reset-rate", type=float, default=0.0, metavar="SHARE",
                        help="connection closed without an answer (a dropped connection)")  # fmt: skip
    faults.add_argument("--poison", action="append", default=[], metavar="TEXT",
                        help="refuse (400) any request with a text containing TEXT; repeatable")  # fmt: skip
    faults.add_argument("--no-usage-metadata", action="store_true",
                        help="answer embeddings without usageMetadata (qsync then counts tokens itself)")  # fmt: skip
    key = parser.add_argument_group("API key")
    key.add_argument("--api-key", default="test-key", help="the key the emulator accepts (default test-key)")
    key.add_argument("--invalid-key", action="store_true",
                     help="print a key the emulator refuses: every call is 400 API_KEY_INVALID, as with a wrong key")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault dice (same seed, same faults)")
    parser.add_argument("--vectors", choices=("random", "words"), default="random",
                        help="random: noise seeded by each input (default); words: vectors follow the words of "
                        "each input's text, so a search finds records whose texts or captions share its words")  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("server_error_rate", "slow_rate", "reset_rate", "retry_info_share"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name.replace('_', '-')} is a share of requests between 0 and 1")
    emulator = GeminiEmulator(
        api_key=args.api_key, latency_s=args.latency, port=args.port, texts_per_minute=args.texts_per_minute,
        tokens_per_minute=args.tokens_per_minute, window_s=args.window, retry_info_share=args.retry_info_share,
        texts_per_day=args.texts_per_day, server_error_rate=args.server_error_rate, slow_rate=args.slow_rate,
        slow_s=args.slow, reset_rate=args.reset_rate, poison=tuple(args.poison),
        usage_metadata=not args.no_usage_metadata, seed=args.seed, vectors=args.vectors,
    ).start()  # fmt: skip
    printed_key = f"not-{args.api_key}" if args.invalid_key else args.api_key
    # Flushed: a parent process reads this line to learn the port (--port 0 picks a free one).
    print(f"GOOGLE_GEMINI_BASE_URL={emulator.url} GEMINI_API_KEY={printed_key}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        emulator.stop()


if __name__ == "__main__":
    main()
