"""Numba kernels: pure functions over numpy arrays, each with a plain-numpy reference twin.

Nothing here imports from the rest of lanewatch.
"""
