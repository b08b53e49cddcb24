"""physdiff-burgers: 1D stochastic viscous Burgers as a physdiff plug-in system.

Installed, it registers the entry point `burgers` in the group `physdiff.systems`; without
installing, name the class as `physdiff_burgers:BurgersSystem` with this folder's parent on
PYTHONPATH.
"""

from physdiff_burgers.system import BurgersSystem

__all__ = ["BurgersSystem"]
