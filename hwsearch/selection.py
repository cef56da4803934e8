"""The final pick: a search's best policies re-scored on images the search never scored.

Every episode is scored on the same search-val images, so the best of hundreds is also the one those images
happened to favour (the winner's curse). Accuracy differences between policies rest on few images: a 2-3-bit
policy and fixed 8-bit disagree on a couple of percent of them, and the best reward goes to a policy that won
most of those by chance. The pick therefore re-scores the ``top`` distinct policies of highest search reward on
fresh images (the first images of the training split: the search never saw them, and the reward compares each
policy to fixed 8-bit on the same images), pools each policy's clean hits over both sets and takes the best
reward on the pooled accuracy. Robustness keeps its search-val figure (an attack on training images would
flatter every policy alike and cost an attack per candidate).

Measured on validation data only (the demo's 200 episodes, 400 random cuts of search-val into 700 images that
choose and 300 that judge): see ARCHITECTURE.md, "The pick".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hwsearch.checks import check_int
from hwsearch.envs import EnvConfig, MixedPrecisionEnv
from hwsearch.errors import ConfigError
from hwsearch.policy import Policy
from hwsearch.search import REWARD_DECIMALS, EpisodeRecord, SearchResult, reward_rank

if TYPE_CHECKING:
    from hwsearch.evaluate import EvaluatorConfig
    from hwsearch.workflow import Workspace

__all__ = ["Candidate", "Selection", "final_pick", "select_policy", "top_records"]


@dataclass(frozen=True)
class Candidate:
    """One re-scored policy: its episode, its clean accuracy on the fresh images and pooled over both sets, and
    the reward recomputed on the pooled accuracy."""

    record: EpisodeRecord
    fresh_accuracy: float
    pooled_accuracy: float
    reward: float


@dataclass(frozen=True)
class Selection:
    """The candidates in search-reward order, and fixed 8-bit's accuracies on the same images."""

    candidates: tuple[Candidate, ...]
    val_images: int
    fresh_images: int
    reference_fresh_accuracy: float
    reference_pooled_accuracy: float
    floor: float | None = None  # the accuracy floor on the pooled images (None: the search had none)

    @property
    def pick_below_floor(self) -> bool:
        """Whether even the pick misses the accuracy floor once re-scored: the search found nothing that keeps it."""
        return self.floor is not None and self.pick.pooled_accuracy < self.floor

    @property
    def pick(self) -> Candidate:
        """Highest pooled reward; ties go to the higher search reward (the earlier candidate)."""
        if not self.candidates:
            raise ValueError("no candidate was re-scored")
        return max(self.candidates, key=lambda c: round(c.reward, REWARD_DECIMALS))

    def to_markdown(self) -> str:
        pick = self.pick
        lines = [
            "## The pick",
            "",
            f"The {len(self.candidates)} distinct policies of highest search reward, re-scored on "
            f"{self.fresh_images} training images the search never scored; clean accuracy pooled with search-val's "
            f"{self.val_images} images, robustness from search-val. Fixed 8-bit: "
            f"{100 * self.reference_fresh_accuracy:.2f}% on them, {100 * self.reference_pooled_accuracy:.2f}% pooled.",
            "",
            "| episode | search reward | search-val accuracy % | fresh accuracy % | pooled accuracy % | pooled reward | |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in self.candidates:
            r = c.record
            lines.append(
                f"| {r.episode} | {r.reward:.4f} | {100 * r.accuracy:.2f} | {100 * c.fresh_accuracy:.2f} | "
                f"{100 * c.pooled_accuracy:.2f} | {c.reward:.4f} | {'picked' if c is pick else ''} |"
            )
        if self.pick_below_floor:
            assert self.floor is not None
            lines += [
                "",
                f"Warning: the pick's pooled accuracy {100 * pick.pooled_accuracy:.2f}% is below the accuracy floor "
                f"({100 * self.floor:.2f}% on the same images): none of the {len(self.candidates)} keeps it on images "
                "the search did not choose on. Expect it to lose more accuracy than --max-accuracy-drop allows; "
                "search again with a lower --robust-weight or more --episodes, or re-score more with --select-top.",
            ]
        return "\n".join(lines) + "\n"


def top_records(result: SearchResult, top: int) -> list[EpisodeRecord]:
    """The ``top`` distinct policies of highest reward (ties to the cheaper, then the earlier episode), each at its
    first episode."""
    seen: set[tuple] = set()
    out: list[EpisodeRecord] = []
    for rec in sorted(result.episodes, key=reward_rank):
        key = rec.policy.key()
        if key not in seen:
            seen.add(key)
            out.append(rec)
            if len(out) == top:
                break
    return out


def select_policy(
    result: SearchResult,
    env_config: EnvConfig,
    fresh_accuracy: Callable[[Policy], float],
    reference: Policy,
    *,
    top: int,
    val_images: int,
    fresh_images: int,
) -> Selection:
    """Re-score the ``top`` best distinct policies of ``result`` with ``fresh_accuracy`` (clean accuracy on
    ``fresh_images`` images the search never scored) and recompute each one's reward (``env_config``'s terms) on
    its hits pooled with search-val's ``val_images``, against ``reference`` (fixed 8-bit, whose search-val
    accuracy is ``env_config.acc_ref``) pooled alike."""
    check_int(top, "select top", 1)
    if val_images < 1 or fresh_images < 1:
        raise ConfigError(f"the pick needs images on both sides, got {val_images} search-val and {fresh_images} fresh")

    def pooled(val_acc: float, fresh_acc: float) -> float:
        return (round(val_acc * val_images) + round(fresh_acc * fresh_images)) / (val_images + fresh_images)

    ref_fresh = fresh_accuracy(reference)
    ref_pooled = pooled(env_config.acc_ref, ref_fresh)
    config = replace(env_config, acc_ref=ref_pooled)  # the floor moves with the reference
    candidates = []
    for rec in top_records(result, top):
        acc = fresh_accuracy(rec.policy)
        pool = pooled(rec.accuracy, acc)
        candidates.append(Candidate(rec, acc, pool, config.reward(pool, rec.robust_accuracy, rec.relative_cost, 1.0)))
    return Selection(tuple(candidates), val_images, fresh_images, ref_fresh, ref_pooled, config.acc_floor)


def final_pick(
    ws: Workspace,
    env: MixedPrecisionEnv,
    result: SearchResult,
    *,
    top: int,
    images: int,
    scoring: EvaluatorConfig | None = None,
    trained_on_train: bool = False,
) -> str:
    """Make the final pick of a finished search on ``env`` (sets ``result.picked``) on the first ``images``
    training images of ``ws``; returns the summary's section about it. ``top=0`` keeps the best reward, and so
    does a search that fine-tuned every policy on the training images (``trained_on_train``: they are not fresh).
    """
    if top == 0 or not result.episodes:
        return "The pick: the best search reward (--select-top 0).\n"
    if trained_on_train:
        return (
            "The pick: the best search reward; the training images are not fresh when every policy was fine-tuned "
            "on them (--episode-finetune-steps).\n"
        )
    from hwsearch.evaluate import Evaluator, EvaluatorConfig
    from hwsearch.workflow import range_images

    x, y = ws.split("train", images)
    # scored as the search scored them (folding, export style), clean only
    config = EvaluatorConfig(
        fold_batch_norms=scoring.fold_batch_norms if scoring else True,
        export_style=scoring.export_style if scoring else "qdq",
    )
    scorer = Evaluator(ws.model, ws.calibration, x, y, config, range_images=range_images(ws, config))
    selection = select_policy(
        result,
        env.config,
        lambda policy: scorer.evaluate(policy).accuracy,
        ws.uniform(8),
        top=top,
        val_images=len(ws.splits.val),  # type: ignore[arg-type]  # every split is a sized map-style dataset
        fresh_images=len(x),
    )
    result.picked = selection.pick.record
    result.notes["pick"] = {"candidates": len(selection.candidates), "below_floor": selection.pick_below_floor}
    return selection.to_markdown()
