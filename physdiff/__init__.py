"""physdiff: posterior sampling for inverse physics problems with score matching through
differentiable physics.

Symbols: x_0 initial state (unknown), x_T observed end state, t -> s one step (s < t in reverse),
dt step size, g diffusion scale, P physics drift, s_theta learned score (docs/method.md).

Public API: `load(checkpoint)` -> `Posterior` (sample, paths, mean_path, ode); `sample(...)` for
your own physics and score network; `systems` (the System interface and registry) for plugging in
a simulator.
"""

__version__ = "0.1.0"

from physdiff.api import Posterior, load, sample

__all__ = ["Posterior", "__version__", "load", "sample"]
