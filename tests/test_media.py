"""Media checks on real files (good, corrupt, missing, oversized, wrong type), and multimodal embedding
through the real google-genai SDK against the emulator: one vector per record, tokens per modality."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qsync_testing import sdk_emulator

from qsync.embedders.gemini import GeminiEmbedder
from qsync.errors import ConfigError, InvalidInput, MediaProblem
from qsync.input.media import MAX_MEDIA_BYTES, check, content_hash, read
from qsync.spec.columns import MediaKind
from qsync.testing import start_offline
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import TOKENS_PER_IMAGE, count_tokens, emulated_vector, media_key

SECRET = "AIzaTEST-secret-key-0123456789"
G2 = "gemini-embedding-2"


def png(rgb: tuple[int, int, int], size: int = 4) -> bytes:
    """A real, valid PNG of one colour (written by hand: no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    header = size.to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def pdf(pages: int) -> bytes:
    """A real, minimal PDF with `pages` empty pages."""
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode()]
    objects += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"] * pages
    body, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objects, start=1):
        offsets.append(len(body))
        body += f"{i} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(body)
    body += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    body += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    return body + f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "red.png").write_bytes(png((255, 0, 0)))
    (tmp_path / "cut.png").write_bytes(png((0, 0, 255))[:-20])  # a partial download
    (tmp_path / "page.html.png").write_bytes(b"<html><body>not found</body></html>")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "two.pdf").write_bytes(pdf(2))
    (tmp_path / "long.pdf").write_bytes(pdf(9))
    with (tmp_path / "huge.png").open("wb") as f:  # sparse: 21 MB on paper, nothing on disk
        f.write(png((1, 2, 3)))
        f.truncate(MAX_MEDIA_BYTES + 1024**2)
    (tmp_path / "folder.png").mkdir()
    return tmp_path


def test_good_files_are_read_with_their_type(files: Path) -> None:
    image = read(files / "red.png", "image")
    assert image.mime_type == "image/png" and image.modality == "IMAGE"
    document = read(files / "two.pdf", "document")
    assert document.mime_type == "application/pdf" and document.pages == 2 and document.modality == "DOCUMENT"


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("missing.png", "image", "missing.png does not exist"),
        ("cut.png", "image", "corrupt PNG"),
        ("page.html.png", "image", "is not a PNG or JPEG image (its bytes say unknown type)"),
        ("empty.png", "image", "empty.png is empty"),
        ("huge.png", "image", "too big: 21.0 MB, limit 20 MB"),
        ("folder.png", "image", "is a folder"),
        ("long.pdf", "document", "has too many pages (9; gemini-embedding-2 reads at most 6)"),
        ("two.pdf", "image", "is not a PNG or JPEG image (its bytes say application/pdf)"),
        ("red.png", "document", "is not a PDF document (its bytes say image/png)"),
    ],
)
def test_bad_files_give_a_reason(files: Path, name: str, kind: MediaKind, reason: str) -> None:
    with pytest.raises(MediaProblem, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read(files / name, kind)


def test_a_truncated_jpeg_is_refused_and_bytes_are_checked_like_files() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"
    assert check(jpeg, "image").mime_type == "image/jpeg"
    with pytest.raises(MediaProblem, match="corrupt JPEG"):
        check(jpeg[:-2], "image")


def test_the_content_hash_is_of_the_bytes_and_the_caption() -> None:
    red, blue = png((255, 0, 0)), png((0, 0, 255))
    assert content_hash(red) == content_hash(png((255, 0, 0)))  # same bytes, whatever the file name
    assert len({content_hash(red), content_hash(blue), content_hash(red, "a red square")}) == 3


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, seed=1) as emu:
        yield emu


@pytest.mark.parametrize("detail_key", ["promptTokenDetails", "promptTokensDetails"])
def test_each_media_record_is_one_content_and_one_vector_with_tokens_per_modality(
    files: Path, emulator: GeminiEmulator, detail_key: str
) -> None:
    emulator.usage_detail_key = detail_key
    embedder = GeminiEmbedder(dimensions=128, model=G2)
    image, document = read(files / "red.png", "image"), read(files / "two.pdf", "document")
    result = embedder.embed_media([(image, "a red square"), (document, None), (image, None)])
    # Three records, three requests: the caption and its image are parts of ONE content.
    sent = list(emulator.received)
    assert [len(r["content"]["parts"]) for r in sent] == [2, 1, 1]
    assert sent[0]["content"]["parts"][0]["text"] == "title: none | text: a red square"
    assert "inline_data" in sent[0]["content"]["parts"][1] and "taskType" not in sent[0]
    keys = [
        "title: none | text: a red square" + media_key("image/png", image.data),
        media_key("application/pdf", document.data),
        media_key("image/png", image.data),
    ]
    for row, key in zip(result.vectors, keys, strict=True):
        expected = emulated_vector(G2, key, 128)
        np.testing.assert_allclose(row, expected / np.linalg.norm(expected), atol=1e-5)
    caption = count_tokens("title: none | text: a red square")
    exact = {"TEXT": caption, "IMAGE": 2 * TOKENS_PER_IMAGE, "DOCUMENT": 2 * TOKENS_PER_IMAGE}
    assert result.tokens_by_modality is not None and sum(result.tokens_by_modality.values()) == sum(exact.values())
    # The SDK only parses the key it knows; with the documented one qsync splits the exact total itself.
    assert result.modality_estimated == (detail_key == "promptTokenDetails")
    if result.modality_estimated:
        assert result.tokens_by_modality == pytest.approx(exact, abs=3)
    else:
        assert result.tokens_by_modality == exact
    assert sum(result.tokens_per_text) == emulator.tokens_metered == caption + 4 * TOKENS_PER_IMAGE
    assert emulator.usd_metered == pytest.approx((caption * 0.20 + 4 * TOKENS_PER_IMAGE * 0.45) / 1e6)


def test_the_emulator_refuses_what_the_model_does_not_take(files: Path, emulator: GeminiEmulator) -> None:
    embedder = GeminiEmbedder(dimensions=128, model=G2)
    long_pdf = (files / "long.pdf").read_bytes()  # bypassing qsync's own check, to see the API's answer
    from qsync.embedders.protocol import Media

    with pytest.raises(InvalidInput, match="at most 6 are supported"):
        embedder.embed_media([(Media("application/pdf", long_pdf), None)])
    with pytest.raises(InvalidInput, match="Unsupported MIME type: image/gif"):
        embedder.embed_media([(Media("image/gif", b"GIF89a"), None)])
    # Seven images in one content (camelCase, as a hand-written client might send them): refused.
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png((9, 9, 9))).decode()}}
    import httpx

    answer = httpx.post(
        f"{emulator.url}/v1beta/models/{G2}:embedContent", headers={"x-goog-api-key": SECRET},
        json={"content": {"parts": [part] * 7}},
    )  # fmt: skip
    assert answer.status_code == 400 and "at most 6 images" in answer.text
    ok = httpx.post(
        f"{emulator.url}/v1beta/models/{G2}:embedContent", headers={"x-goog-api-key": SECRET},
        json={"content": {"parts": [part] * 6}},
    )  # fmt: skip
    assert ok.status_code == 200 and len(ok.json()["embedding"]["values"]) == 3072
    with pytest.raises(ConfigError, match="embeds text only"):
        GeminiEmbedder(dimensions=128, model="gemini-embedding-001").embed_media(
            [(read(files / "red.png", "image"), None)]
        )


def test_the_offline_emulator_never_takes_a_real_key_and_its_words_mode_follows_captions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qsync.testing.gemini_model import worded_vector

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    with pytest.raises(RuntimeError, match="key is set"):
        start_offline()
    # "words": the instruction is read as one, and records land near queries that share their words.
    query = worded_vector(G2, "q", "task: search result | query: a cat", None)
    cat = worded_vector(G2, "1" + media_key("image/png", png((1, 1, 1))), "title: none | text: Chelsea the cat", None)
    dog = worded_vector(G2, "2" + media_key("image/png", png((2, 2, 2))), "title: none | text: two dogs", None)
    assert float(query @ cat) > 0.5 and float(query @ dog) < 0.2
    assert abs(float(np.linalg.norm(cat)) - 1.0) < 1e-6
    # Nested like Gemini's: a smaller size is the full vector's first dimensions (not unit length: qsync scales it).
    small = worded_vector(G2, "1" + media_key("image/png", png((1, 1, 1))), "title: none | text: Chelsea the cat", 768)
    np.testing.assert_array_equal(small, cat[:768])
