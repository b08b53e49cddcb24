"""What systems without a per-trajectory condition share (script layer; heat and N-body)."""

from __future__ import annotations

from torch import Tensor, nn

from physdiff.sde import Drift

__all__ = ["Unconditioned"]


class Unconditioned:
    """A system whose drift needs nothing besides the state: no condition, the bare network."""

    def condition(self, extras: dict[str, Tensor], source: str) -> None:
        """What the drift needs besides the state, from a file's per-trajectory arrays: nothing."""
        return

    def score_fn(self, net: nn.Module, condition: None = None) -> Drift:
        return net
