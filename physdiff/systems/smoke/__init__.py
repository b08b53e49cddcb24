"""Buoyancy-driven smoke with obstacles (smoke-64) on PhiFlow: the System, its dataset generator
and figures. Importing this package imports PhiFlow; the registry does so only on demand."""

from physdiff.systems.smoke.system import SmokeSystem

__all__ = ["SmokeSystem"]
