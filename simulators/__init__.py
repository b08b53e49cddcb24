"""Physical systems: one module per system, each a prior sampler and pure step functions.

Torch tensors in, torch tensors out; nothing here imports physdiff.
"""
