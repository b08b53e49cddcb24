"""Score and learned-physics networks (nn.Modules only): periodic fields, bounded grids with
condition channels, sets of bodies."""

from physdiff.nets.blocks import FiLMBlock, TimeEmbedding
from physdiff.nets.periodic import PeriodicScoreNet
from physdiff.nets.sets import PairwiseForce, SetScoreNet
from physdiff.nets.unet import GridScoreNet

__all__ = ["FiLMBlock", "GridScoreNet", "PairwiseForce", "PeriodicScoreNet", "SetScoreNet",
           "TimeEmbedding"]
