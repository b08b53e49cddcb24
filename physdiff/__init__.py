"""physdiff: score matching through differentiable physics.

Symbols: x_0 initial state (unknown), x_T observed end state, t -> s one step (s < t in reverse),
dt step size, g diffusion scale, P physics drift, s_theta learned score.
"""

__version__ = "0.1.0"
