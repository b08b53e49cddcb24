"""Score and learned-physics networks (nn.Modules only): periodic fields, bounded grids with
condition channels, sets of bodies."""

from physdiff.nets.blocks import FiLMBlock, TimeEmbedding
from physdiff.nets.circular import CircularConv1d, CircularConv2d
from physdiff.nets.periodic import PeriodicScoreNet
from physdiff.nets.sets import PairwiseForce, SetScoreNet
from physdiff.nets.unet import GridScoreNet

__all__ = ["CircularConv1d", "CircularConv2d", "FiLMBlock", "GridScoreNet", "PairwiseForce",
           "PeriodicScoreNet", "SetScoreNet", "TimeEmbedding"]
