"""The library API: posterior samples from a trained checkpoint, or from your own physics and
score network, in a few lines (no files, no printing).

    import physdiff
    post = physdiff.load("runs/demo/checkpoint.pt")
    x0 = post.sample(x_T, n=16, seed=0)        # (M, 16, *state) reverse-SDE samples of x_0
    mean = post.mean_path(x_T)                 # (M, *state)

    x0 = physdiff.sample(x_T, score, g=0.1, times=ts, n=8, inverse_step=my_step_backwards)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from physdiff.model import Model, check_observations, load_model, reconstruct, sample_posterior
from physdiff.runtime import pick_device
from physdiff.samplers import Noise, euler_maruyama, repeat_samples
from physdiff.sde import Drift, as_drift, from_inverse_step, reverse_drift
from physdiff.systems.base import zero_drift

__all__ = ["Posterior", "load", "sample"]


class Posterior:
    """A trained model, ready to sample p(x_0 | x_T). Observations x_T are (M, *state) in the
    training data's normalised units (`normalise` converts raw ones); `condition` (M, *) is
    what the system needs besides the state (e.g. obstacle geometry (M, n, 5)), else None."""

    def __init__(self, model: Model) -> None:
        self.model = model

    @property
    def system(self) -> object:
        return self.model.system

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self.model.system.state_shape)

    @property
    def times(self) -> Tensor:
        """The time grid t_0..t_K, (K + 1,), float64."""
        return self.model.meta.times()

    def normalise(self, x_raw: Tensor) -> Tensor:
        """Raw-unit states -> the training data's normalised units."""
        return self.model.normalise(x_raw)

    def _prepare(self, x_T: Tensor, condition: Tensor | None) -> tuple[Tensor, Tensor | None]:
        device = next(self.model.score.parameters()).device
        x_T = torch.as_tensor(x_T, dtype=torch.float32).to(device)
        check_observations(x_T, self.model, "x_T")
        return x_T, None if condition is None else condition.to(device)

    def sample(self, x_T: Tensor, n: int = 16, seed: int = 0, noise: str = "calibrated",
               condition: Tensor | None = None, batch_size: int = 512) -> Tensor:
        """n reverse-SDE samples of x_0 per observation: (M, *state) -> (M, n, *state)."""
        x_T, condition = self._prepare(x_T, condition)
        gen = torch.Generator(x_T.device).manual_seed(seed)
        return sample_posterior(self.model, x_T, n, gen, noise, batch_size=batch_size,
                                condition=condition)

    def paths(self, x_T: Tensor, n: int = 1, seed: int = 0, noise: str = "calibrated",
              condition: Tensor | None = None, batch_size: int = 512) -> Tensor:
        """Whole reverse-SDE paths in forward time order: (M, *state) -> (M, n, K + 1, *state)."""
        x_T, condition = self._prepare(x_T, condition)
        gen = torch.Generator(x_T.device).manual_seed(seed)
        _, paths = sample_posterior(self.model, x_T, n, gen, noise, batch_size=batch_size,
                                    return_paths=True, condition=condition)
        return paths

    def mean_path(self, x_T: Tensor, condition: Tensor | None = None) -> Tensor:
        """The noise-free c = 1 path (the posterior mean for linear-Gaussian physics):
        (M, *state) -> (M, *state)."""
        x_T, condition = self._prepare(x_T, condition)
        with torch.no_grad():
            return reconstruct(self.model, x_T, "mean", condition=condition)

    def ode(self, x_T: Tensor, method: str = "euler", condition: Tensor | None = None) -> Tensor:
        """The probability-flow ODE reconstruction: (M, *state) -> (M, *state)."""
        x_T, condition = self._prepare(x_T, condition)
        with torch.no_grad():
            return reconstruct(self.model, x_T, "ode", method, condition=condition)


def load(checkpoint: str | Path, device: str = "auto", system: str | None = None) -> Posterior:
    """Load a checkpoint written by train.py (the networks, the system it was trained on and the
    noise calibration). `system` overrides the recorded system (name or package.module:Class)."""
    return Posterior(load_model(Path(checkpoint), pick_device(device), system))


@torch.no_grad()
def sample(x_T: Tensor, score: Drift, g: float, times: Tensor, n: int = 16, *,
           inverse_step: Callable[[Tensor], Tensor] | None = None,
           step: Callable[[Tensor], Tensor] | None = None, noise: Noise | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """Posterior samples of x_0 from your own physics and score network (docs/method.md §2, §4).

    The reverse step from t_{k+1} to t_k is P̃⁻¹(x) + Δt g² s(x, t_{k+1}) + g √Δt z, with the
    approximate inverse P̃⁻¹ given as `inverse_step` (e.g. your simulator run with −Δt), or
    derived from a forward simulator `step` as 2x − S(x) (right for diffusion), or the identity
    (no physics) if neither is given.

    Arguments:
        x_T: Observed end states (M, *state).
        score: s(x, t): (B, *state), (B,) -> (B, *state), the score ∇log p_t itself.
        g: Noise scale of the forward SDE.
        times: Uniform forward grid t_0 = 0 < ... < t_K = T, shape (K + 1,).
        noise: Reverse-step noise (see physdiff.noise); default g √Δt z.

    Returns:
        (M, n, *state).
    """
    dt = float(times[1] - times[0])
    if inverse_step is not None:
        physics = from_inverse_step(inverse_step, dt)
    elif step is not None:
        physics = as_drift(step, dt)
    else:
        physics = zero_drift
    ts = torch.as_tensor(times).flip(0).to(x_T.device, x_T.dtype)
    flat = euler_maruyama(reverse_drift(physics, score, g), repeat_samples(x_T, n), ts, g,
                          generator, noise)
    return flat.reshape(x_T.shape[0], n, *x_T.shape[1:])
