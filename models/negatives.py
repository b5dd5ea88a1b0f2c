"""'Not this person': a subject's negative examples, and the rule that refuses a match by them.

A user who marks a face "not S" gives a labelled example: S's enrolled faces are the positive
examples of S, the marked faces its negative ones. A probe ``q`` is refused for S when its
nearest example of S, positive or negative, is a negative::

    max_n cos(q, n)  >=  max_e cos(q, e)      (n: S's negatives, e: S's enrolled faces)

This is one-nearest-neighbour classification between "S" and "not S", in the metric the
search already uses, so it needs no threshold of its own and holds by construction:

* the marked face itself is never again given to S, at any threshold: its similarity to its
  own negative is 1 (ties go to the negative);
* it reaches exactly the faces nearer to a negative than to every enrolled face of S: mostly
  other photos of the person who was mistaken for S (measured: README, "Clustering");
* it costs a true match only when a photo of S is nearer to a negative than to all of S's
  own enrolled faces, which a lookalike negative can cause; more enrolled faces of S make it
  rarer, and deleting the negative undoes it.

The alternative measured beside it (``rule="threshold"``) refuses S whenever the probe
matches a negative at the match threshold (``max_n cos(q, n) >= T``); it removes at least as
many false matches (for a candidate at or above ``T`` it refuses everything the nearest rule
does) and costs more true matches, since a sibling's photo as negative then refuses S's own
photos that are close to both. ``faceserve eval negatives`` measures both on LFW.

Plain numpy: the service (``service.api.routes.common``) and the evaluation share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["RULES", "NegativeHit", "Rule", "nearest_negative", "refused", "refused_mask"]

Rule = Literal["nearest", "threshold"]
RULES: tuple[str, ...] = ("nearest", "threshold")


@dataclass(frozen=True)
class NegativeHit:
    index: int  # row of the negatives matrix
    similarity: float  # cosine similarity of the probe with that negative


def nearest_negative(query: np.ndarray, negatives: np.ndarray) -> NegativeHit | None:
    """The negative most similar to ``query`` (unit vectors), or None when there are none."""
    if len(negatives) == 0:
        return None
    sims = np.asarray(negatives, np.float32) @ np.asarray(query, np.float32)
    i = int(np.argmax(sims))
    return NegativeHit(i, float(min(1.0, max(-1.0, sims[i]))))


def refused_mask(
    positive: np.ndarray, negative: np.ndarray, threshold: float, rule: Rule = "nearest"
) -> np.ndarray:
    """Element-wise: candidates of similarity ``positive`` (their best enrolled face) refused
    by negatives of similarity ``negative`` (-inf where a subject has none)."""
    if rule == "nearest":
        return np.asarray(negative) >= np.asarray(positive)
    if rule == "threshold":
        return np.asarray(negative) >= threshold
    raise ValueError(f"rule must be one of {RULES}, not {rule!r}")


def refused(positive: float, negative: float, threshold: float, rule: Rule = "nearest") -> bool:
    """``refused_mask`` for one candidate."""
    return bool(refused_mask(np.float64(positive), np.float64(negative), threshold, rule))
