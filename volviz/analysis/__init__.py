"""Analysis of captured arrays: filter orders, importance, embeddings (numpy + scikit-learn only).

Nothing here imports torch, pyvista or VTK: views consume the results.
"""
