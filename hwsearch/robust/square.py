"""Square attack (Andriushchenko et al., ECCV 2020; torchattacks' implementation): gradient-free, L-inf.

Every other attack in the report follows a gradient (STE, shadow or transfer). A search that rewards
robustness can also reward gradient masking, which fools all of them; Square only queries the model's forward
value, so it cannot be masked that way. :func:`masking_warning` turns a result row into the warning the report
prints: a gradient-free robust accuracy well below the lowest gradient one means the gradients were blunted.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from hwsearch.errors import ConfigError, HwsearchError
from hwsearch.robust.attacks import AttackConfig, is_gradient_free

__all__ = ["MASKING_MARGIN", "square_attack", "masking_gap", "masking_warning"]

MASKING_MARGIN = 0.02  # 2 points: a gradient-free attack this much stronger than every gradient one is a warning


class _AsImage(nn.Module):
    """Views a flat batch as (N, features, 1, 1) images so Square's windows can search it; the model sees its
    own shape."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.reshape(x.shape[0], *self.shape))


def square_attack(
    model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, generator: torch.Generator | None
) -> Tensor:
    """Square examples for ``model`` (already in eval mode and on ``x``'s device) within ``cfg.eps`` of ``x``.

    ``cfg.steps`` queries per restart, ``cfg.restarts`` restarts, ``cfg.loss`` (``margin`` as in AutoAttack, or
    ``ce``). The seed is drawn from ``generator``; torchattacks reseeds torch's global generator, so the
    caller's random state is restored afterwards. Inputs other than (N, C, H, W) images are searched as one
    pixel with every feature a channel.
    """
    try:
        import torchattacks
    except ImportError:  # pragma: no cover - a declared dependency
        raise HwsearchError("the square attack needs torchattacks: pip install torchattacks") from None
    if cfg.method != "square" or cfg.norm != "linf":
        raise ConfigError(f"square_attack got attack {cfg.label} ({cfg.norm}); it runs L-inf Square only")
    seed = 0 if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    shape = tuple(x.shape[1:])
    target = model if x.dim() == 4 else _AsImage(model, shape)
    xi = x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        atk = torchattacks.Square(
            target, norm="Linf", eps=cfg.eps, n_queries=cfg.steps, n_restarts=cfg.restarts, loss=cfg.loss, seed=seed
        )
        atk.set_device(x.device)
        x_adv = atk(xi, y)
    x_adv = x_adv.reshape(x.shape)
    # exact budget and range (the library clamps too; this makes it an invariant of ours, not of theirs)
    return torch.minimum(torch.maximum(x_adv, x - cfg.eps), x + cfg.eps).clamp(0.0, 1.0)


def masking_gap(per_attack: Mapping[str, float]) -> float | None:
    """The lowest gradient attack's robust accuracy minus the lowest gradient-free one (a fraction).

    Positive means the gradient-free search breaks images every gradient attack missed. ``None`` when the row
    lacks either kind; ``worst`` (the per-sample worst case) is not an attack column and is ignored.
    """
    grad = [v for k, v in per_attack.items() if k != "worst" and not is_gradient_free(k)]
    free = [v for k, v in per_attack.items() if k != "worst" and is_gradient_free(k)]
    if not grad or not free:
        return None
    return min(grad) - min(free)


def masking_warning(per_attack: Mapping[str, float], margin: float = MASKING_MARGIN) -> bool:
    """Possible gradient masking: gradient-free robust accuracy more than ``margin`` below every gradient attack's.

    Masking makes gradient attacks look weak (high robust accuracy) while a gradient-free one finds the errors.
    """
    gap = masking_gap(per_attack)
    return gap is not None and gap > margin + 1e-12
