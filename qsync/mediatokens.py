"""Tokens an image or a PDF costs, before the API says: the one media estimate.

The planner writes it into each media record's manifest row (`media_tokens`, inside `token_estimate`), so
the budget's reservations, `qsync estimate`, the estimate recorded at plan time and the split of a total
the API reports without per-modality details all start from the same figure.

Google publishes a price per image, not tokens per image: $0.00012 an image at $0.45 per 1M image tokens
is ~258-267 tokens (an inference); tokens per PDF page are undocumented, and qsync counts a page as an
image. Both figures live in pricing.json beside the prices (`media_tokens_per_image`,
`media_tokens_per_page`), so a measured value replaces them without a code change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .pricing import model_info

if TYPE_CHECKING:
    from .media import Media

MEDIA_MODEL: Final = "gemini-embedding-2"  # the multimodal model; its figures apply when none is named
_DEFAULT_PER_UNIT: Final = 258


def per_image(model: str = MEDIA_MODEL) -> int:
    return int(model_info(model).get("media_tokens_per_image", _DEFAULT_PER_UNIT))


def per_page(model: str = MEDIA_MODEL) -> int:
    return int(model_info(model).get("media_tokens_per_page", _DEFAULT_PER_UNIT))


def media_tokens(media: Media, model: str = MEDIA_MODEL) -> dict[str, int]:
    """Tokens of the media part of one record, by modality: {"IMAGE": n} or {"DOCUMENT": n}. A PDF whose
    pages could not be counted cheaply (media.pages == 0) is taken as one page."""
    if media.modality == "DOCUMENT":
        return {"DOCUMENT": per_page(model) * max(1, media.pages)}
    return {"IMAGE": per_image(model)}
