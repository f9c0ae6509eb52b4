"""What a run will cost and how far it is: the projected time printed before a run (from one timed
step per layer), and a progress bar over units that also moves inside a batch.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from volviz.analysis.actmax.speed import format_seconds, time_first_step

__all__ = ["project", "UnitBar"]


def project(plans, settings, shape, report) -> float:
    """Time one step per layer on a batch of its units and print the projected time of the run."""
    total = 0.0
    batch = settings.batch_for(shape)
    lines = []
    for plan in plans:
        k = max(1, min(batch // settings.seeds, len(plan.pending))) if len(plan.pending) else 1
        units = np.repeat(plan.pending[:k] if len(plan.pending) else plan.units[:1], settings.seeds)
        step = time_first_step(
            plan.problem,
            units,
            np.tile(np.arange(settings.seeds), len(units) // settings.seeds),
            settings.base_config(),
        )
        per_elem = step / len(units)
        elems = len(plan.pending) * settings.seeds * settings.steps
        search = 0
        if plan.group is None and settings.search > 0:
            search = (
                settings.search
                * min(settings.search_units, len(plan.units))
                * (settings.search_steps or settings.steps)
            )
        secs = per_elem * (elems + search)
        total += secs
        extra = f" + search {settings.search} x {min(settings.search_units, len(plan.units))} units" if search else ""
        seeds = f"{settings.seeds} seed{'s' if settings.seeds != 1 else ''}"
        lines.append(
            f"  {plan.layer}: {len(plan.pending)} units x {seeds} x {settings.steps} "
            f"steps{extra}: ~{format_seconds(secs)}  (first step: {step:.2f} s for {len(units)} "
            f"images at {shape[1]} x {shape[2]}, {1000 * per_elem:.1f} ms per image and step)"
        )
    report(
        f"projected time ~{format_seconds(total)} ({settings.device}, {torch.get_num_threads()} "
        f"thread{'s' if torch.get_num_threads() > 1 else ''}):\n" + "\n".join(lines)
    )
    return total


class UnitBar:
    """A tqdm bar over units that also moves during a batch (one step = units / steps); ``n`` is
    the whole units counted so far (also when the bar is disabled)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(total=total, desc="optimize", unit="unit", disable=not enabled)
        self.base = 0.0
        self.frac = 0.0
        self.n = 0

    def set_description(self, text: str) -> None:
        self.bar.set_description(text)

    def _to(self, target: int) -> None:
        if target > self.n:
            self.bar.update(target - self.n)
            self.n = target

    def stepper(self, n_units: int, steps: int):
        self._batch = n_units

        def on_step(t: int) -> None:
            self.frac = n_units * (t + 1) / max(steps, 1)
            self._to(int(self.base + self.frac + 1e-9))

        return on_step

    def finish_batch(self) -> None:
        """The batch's units are done (whatever steps the callback saw)."""
        self.base += getattr(self, "_batch", self.frac)
        self.frac = 0.0
        self._to(int(round(self.base)))

    def search_steps(self, total_steps: int):
        count = [0]

        def on_step(t: int) -> None:
            count[0] += 1
            if count[0] % 4 == 0 or count[0] == total_steps:
                self.bar.set_postfix_str(f"search {count[0]}/{total_steps} steps", refresh=True)

        return on_step

    def close(self) -> None:
        self.bar.close()
