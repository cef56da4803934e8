"""What every ``hwsearch`` command module shares: the common flags, the deprecated ``--device`` alias, the progress
bar and quiet printing. Command modules import this, never ``hwsearch.cli`` (which imports them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hwsearch.hardware import DEFAULT_DEVICE
from hwsearch.runtime import COMPUTE_DEVICE_HELP

if TYPE_CHECKING:  # the pipelines (torch, SB3) load with the command that needs them, not with --help
    from hwsearch.pipelines import ModelSource

__all__ = [
    "DEFAULT_CHECKPOINT",
    "FACTORY_HELP",
    "TARGET_HELP",
    "DeprecatedAlias",
    "ProgressBar",
    "add_common",
    "add_target",
    "add_compute_device",
    "model_source",
    "say",
]

DEFAULT_CHECKPOINT = "runs/fp32.pt"
FACTORY_HELP = "rebuild a checkpoint of a custom model with this factory (imports it: only code you trust)"
TARGET_HELP = (
    "target hardware whose cost model prices policies: a device (see `hwsearch latency devices`), ort-cpu[:N|all] "
    "(this CPU under ONNX Runtime, measured on first use) or a table"
)


class DeprecatedAlias(argparse.Action):
    """An old flag that still works: stores into the new flag's ``dest`` and says, once per use, what to type."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new_flag: str, **kwargs: Any) -> None:
        self.new_flag = new_flag
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None
    ) -> None:
        print(
            f"hwsearch: note: {option_string} is deprecated on `{parser.prog}`; use {self.new_flag} {values}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_target(p: argparse.ArgumentParser, default: str | None = DEFAULT_DEVICE, help: str = TARGET_HELP) -> None:
    """``--target`` (the cost model), with ``--device`` as its deprecated alias."""
    p.add_argument("--target", default=default, help=help)
    p.add_argument("--device", dest="target", action=DeprecatedAlias, new_flag="--target")


def add_compute_device(p: argparse.ArgumentParser, *, alias: bool = False) -> None:
    """``--compute-device`` (where torch runs); ``alias`` adds ``--device`` for it (``train``'s old flag)."""
    p.add_argument("--compute-device", default="cpu", help=COMPUTE_DEVICE_HELP)
    if alias:
        p.add_argument("--device", dest="compute_device", action=DeprecatedAlias, new_flag="--compute-device")


def add_common(p: argparse.ArgumentParser, checkpoint: bool = True, auto_threads: bool = False) -> None:
    """The flags of every command that loads a trained model; ``auto_threads``: ``--threads`` defaults to the
    measured choice of :mod:`hwsearch.cores` (search, sweep, compare) instead of 1."""
    if checkpoint:
        p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="FP32 checkpoint from `hwsearch train`")
    p.add_argument("--data-root", default=None, help="folder of a local dataset (cifar10, svhn, imagefolder)")
    p.add_argument("--model-factory", default=None, metavar="MODULE:FACTORY", help=FACTORY_HELP)
    add_compute_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    if auto_threads:
        p.add_argument(
            "--threads",
            type=int,
            default=None,
            help="torch CPU threads (default: 1 or every core this process may use, whichever a probe of the model "
            "measures faster)",
        )
    else:
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for small models)")


def model_source(args: argparse.Namespace) -> ModelSource:
    from hwsearch.pipelines import ModelSource

    return ModelSource(
        checkpoint=args.checkpoint,
        data_root=args.data_root,
        model_factory=getattr(args, "model_factory", None),
        compute_device=getattr(args, "compute_device", "cpu"),
    )


def say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text)


class ProgressBar:
    """A tqdm bar on stderr for a job's :class:`~hwsearch.job.Progress` and for training epochs (``total``
    epochs; the bar appears with the first one, so a command that fails first prints only its error)."""

    def __init__(self, quiet: bool, total: int = 0, desc: str = "") -> None:
        self.quiet = quiet
        self.total, self.desc = total, desc
        self.bar: Any = None

    def start(self, total: int, done: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, disable=self.quiet, dynamic_ncols=True, file=sys.stderr)
        self.bar.update(done)

    def episode(self, record: Any, best_reward: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            best=f"{best_reward:.3f}", acc=f"{record.accuracy:.3f}", cost=f"{record.relative_cost:.2f}"
        )

    def epoch(self, epoch: int, stats: dict) -> None:
        if self.bar is None:
            self.start(self.total, 0, self.desc)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['train_acc']:.3f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
