"""Square attack (Andriushchenko et al., ECCV 2020; torchattacks' implementation): gradient-free, L-inf.

Every other attack in the report follows a gradient (STE, shadow or transfer). A search that rewards
robustness can also reward gradient masking, which fools all of them; Square only queries the model's forward
value, so it cannot be masked that way (:mod:`hwsearch.robust.masking` reads the two kinds against each other).
Reached through :func:`hwsearch.robust.attack` with ``AttackConfig("square", eps, queries)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hwsearch.errors import ConfigError, HwsearchError

__all__ = ["square_attack"]


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
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    queries: int,
    restarts: int = 1,
    loss: str = "margin",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Square examples for ``model`` (already in eval mode and on ``x``'s device) within L-inf ``eps`` of ``x``.

    ``queries`` per restart, ``restarts`` restarts, ``loss`` ``margin`` (as in AutoAttack) or ``ce``. The seed
    is drawn from ``generator``; torchattacks reseeds torch's global generator, so the caller's random state
    is restored afterwards. Inputs other than (N, C, H, W) images are searched as one pixel with every feature a
    channel. Images the model already gets wrong come back unchanged, and so do those it never fools.
    """
    try:
        import torchattacks
    except ImportError:  # pragma: no cover - a declared dependency
        raise HwsearchError(
            "the square attack needs torchattacks: pip install --no-deps 'torchattacks>=3.5,<4' (make install does)"
        ) from None
    if loss not in ("margin", "ce") or queries < 1 or restarts < 1 or not 0 <= eps <= 1:
        raise ConfigError(
            f"square attack: loss {loss!r}, queries {queries}, restarts {restarts}, eps {eps} (need margin/ce, "
            ">= 1, >= 1, [0, 1])"
        )
    seed = 0 if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    shape = tuple(x.shape[1:])
    target = model if x.dim() == 4 else _AsImage(model, shape)
    xi = x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        atk = torchattacks.Square(
            target, norm="Linf", eps=eps, n_queries=queries, n_restarts=restarts, loss=loss, seed=seed
        )
        atk.set_device(x.device)
        x_adv = atk(xi, y)
    x_adv = x_adv.reshape(x.shape)
    # exact budget and range (the library clamps too; this makes it an invariant of ours, not of theirs)
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
