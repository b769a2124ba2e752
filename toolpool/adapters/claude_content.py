"""Prompts for claude as content blocks (text, images, documents), in the Messages API's shapes.

A prompt may be a ``str`` or a list whose items are strings (text blocks),
block dicts as the Messages API takes them, or :class:`Image` s::

    pool.submit(["What is in this picture?", Image.from_file("chart.png")])
"""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: What claude accepts in a user message's content.
BLOCK_TYPES = ("text", "image", "document")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True)
class Image:
    """An image for a prompt: raw bytes and their media type (PNG, JPEG, GIF or WebP)."""

    data: bytes
    media_type: str = "image/png"

    def __post_init__(self) -> None:
        if self.media_type not in IMAGE_TYPES:
            raise ValueError(f"image media_type must be one of {', '.join(IMAGE_TYPES)}, got {self.media_type!r}")
        if not self.data:
            raise ValueError("image data is empty")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Image:
        """Read an image file; its media type comes from the file name."""
        guessed, _ = mimetypes.guess_type(os.fspath(path))
        with open(path, "rb") as f:
            return cls(f.read(), guessed or "image/png")

    def block(self) -> dict[str, Any]:
        return {"type": "image", "source": {"type": "base64", "media_type": self.media_type,
                                            "data": base64.b64encode(self.data).decode("ascii")}}


Block = str | Image | Mapping[str, Any]
Prompt = str | Sequence[Block]


def content_of(prompt: Prompt) -> str | list[dict[str, Any]]:
    """``prompt`` as a user message's ``content``: the str itself, or checked blocks.

    Raises TypeError/ValueError naming the item that claude could not take.
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (bytes, bytearray)) or not isinstance(prompt, Sequence):
        raise TypeError(f"prompt must be str or a list of content blocks, got {type(prompt).__name__}")
    blocks: list[dict[str, Any]] = []
    for n, item in enumerate(prompt):
        if isinstance(item, str):
            blocks.append({"type": "text", "text": item})
        elif isinstance(item, Image):
            blocks.append(item.block())
        elif isinstance(item, Mapping) and item.get("type") in BLOCK_TYPES:
            blocks.append(dict(item))
        else:
            raise TypeError(f"prompt block {n} must be a str, an Image or a dict with type in {BLOCK_TYPES}, "
                            f"got {item!r:.80}")
    if not blocks:
        raise ValueError("prompt has no content blocks")
    return blocks


def is_empty(content: str | list[dict[str, Any]]) -> bool:
    """True when ``content`` carries nothing (no non-blank text, no image or document)."""
    if isinstance(content, str):
        return not content.strip()
    return all(b.get("type") == "text" and not str(b.get("text", "")).strip() for b in content)
