"""Build data/wordnet_sample.jsonl from WordNet 3.0 (Debian package wordnet-base).

Each record is one synset: its lemmas and gloss (definition and examples). The sample is the first
N noun, verb, adjective and adverb synsets in proportion, so it has varied, real English text.
WordNet 3.0 licence: see data/WORDNET-LICENSE.

    apt-get install wordnet-base && python scripts/make_sample_data.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
SHARE = {"noun": 0.6, "verb": 0.2, "adj": 0.15, "adv": 0.05}


def synsets(kind: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for line in (WORDNET / f"data.{kind}").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue  # licence header
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        offset, lexfile, count = fields[0], int(fields[1]), int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
        out.append(
            {
                "id": f"{kind}:{offset}",
                "lemmas": ", ".join(lemmas),
                "pos": POS[kind],
                "lexfile": lexfile,
                "text": f"{', '.join(lemmas)}: {gloss.strip()}",
            }
        )
    return out


def main(total: int = 5000) -> None:
    records: list[dict[str, object]] = []
    for kind, share in SHARE.items():
        items = synsets(kind)
        step = max(1, len(items) // int(total * share))
        records.extend(items[::step][: int(total * share)])
    target = Path(__file__).resolve().parents[1] / "data" / "wordnet_sample.jsonl"
    with target.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records to {target}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
