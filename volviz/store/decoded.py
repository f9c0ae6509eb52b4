"""The images of a capture, checked by decoding them, and decoded only once.

Planning decodes every image (a file that does not decode is skipped and reported before anything
is written, so the store's rows are fixed). The preprocessed tensors it made are kept, up to a byte
budget, for the capture to use instead of decoding again: on a small model such as the digits
LeNet, decoding is a third of a capture's time. Beyond the budget the capture decodes again
(large images, where the model's own cost dwarfs decoding anyway). Memory: at most ``budget`` bytes.
"""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from volviz.sources.images import ImageRecord, read_image
from volviz.sources.preprocess import Preprocess

log = logging.getLogger("volviz.capture")

#: bytes of preprocessed images kept between planning and capture (the digits: 1.2 M images)
KEEP_BYTES = 256 << 20


class DecodedImages:
    """Preprocessed tensors of still images by (path, frame), each handed out once."""

    def __init__(self, budget: int = KEEP_BYTES):
        self.budget, self.used = budget, 0
        self._kept: dict[tuple, torch.Tensor] = {}

    def keep(self, record: ImageRecord, x: torch.Tensor) -> None:
        nbytes = x.numel() * x.element_size()
        if self.used + nbytes <= self.budget:
            self._kept[(record.path, record.frame)] = x
            self.used += nbytes

    def take(self, record: ImageRecord, prep: Preprocess) -> torch.Tensor:
        x = self._kept.pop((record.path, record.frame), None)
        if x is None:
            return prep(read_image(record))
        self.used -= x.numel() * x.element_size()
        return x

    def __len__(self) -> int:
        return len(self._kept)


def check_images(
    records: list[ImageRecord],
    prep: Preprocess,
    progress: bool,
    limit: int | None = None,
    keep: DecodedImages | None = None,
) -> tuple[list, list]:
    """Records whose pixels decode (a video: its last frame decodes); the others, with reasons.
    With ``limit`` (``--max-images``), checking stops once that many records are good; with
    ``keep``, the preprocessed stills are kept there for the capture."""
    last_frame: dict[str, ImageRecord] = {}
    for r in records:
        if r.frame is not None and (r.path not in last_frame or r.frame > last_frame[r.path].frame):
            last_frame[r.path] = r
    ok, skipped, verdict = [], [], {}
    total = len(records) if limit is None else min(limit, len(records))
    bar = tqdm(total=total, desc="checking images", disable=not progress or total < 200, unit="img")
    for r in records:
        if limit is not None and len(ok) >= limit:
            break
        probe = last_frame[r.path] if r.frame is not None else r  # a video: checked once, by its last frame
        key = (probe.path, probe.frame)
        if key not in verdict:
            try:
                x = prep(read_image(probe))
                verdict[key] = None
                if keep is not None and r.frame is None:
                    keep.keep(r, x)
            except Exception as exc:  # unreadable / not an image / truncated video / impossible channels
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                log.warning("skipping %s: %s", r.path, reason)
                skipped.append({"path": r.path, "reason": reason})
                verdict[key] = reason
        if verdict[key] is None:
            ok.append(r)
            bar.update(1)
    bar.close()
    return ok, skipped
