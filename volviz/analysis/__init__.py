"""Analysis of a model and its captured arrays: filter orders, image sequences, importance and
pruning, gradient checks, saliency, class groups, preferred inputs, the network graph.

Nothing here imports pyvista, VTK or trame: the views consume the results.
"""
