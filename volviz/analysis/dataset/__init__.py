"""The dataset view: what a trained network does with all its images, not one at a time.

=================  ==============================================================================
``descriptors``    one row per image for a layer: stored descriptors, or pooled activations
``embedding``      PCA / t-SNE / UMAP maps of the descriptors, kept in ``results("embedding")``
``neighbours``     nearest images in descriptor space, and the share of neighbours of one class
``topk``           each unit's top images, score histograms, receptive-field crops from the model
``occlusion``      occlusion sensitivity and deconvnet projections (captum)
``inversion``      images whose code at a layer matches a real image's (the actmax optimizer)
``fooling``        real images nudged into another class with high confidence
``diagnostics``    dead units, sparsity, filter correlation, linear probes, confusion + uncertain
``modelio``        normalization between the store's pixels and the model, logits / probabilities
=================  ==============================================================================

Streamed passes hold one batch of a layer's activations (``descriptors.batch_rows``: 256 images,
fewer when they would pass 64 MiB; a read holds about three copies). No module
here imports matplotlib, pyvista or the views; see docs/dataset.md.
"""

# (the function ``descriptors`` stays in its module: re-exported here it would hide the module)
from volviz.analysis.dataset.descriptors import (
    DatasetError,
    NoDescriptorsError,
    TooFewImagesError,
    image_table,
    iter_descriptors,
)
from volviz.analysis.dataset.embedding import Embedding, embed, embed_store, load_embedding, save_embedding
from volviz.analysis.dataset.neighbours import brute_neighbours, nearest, share_table, store_neighbours
from volviz.analysis.dataset.topk import TopExamples, top_examples, unit_crops

__all__ = [
    "DatasetError",
    "NoDescriptorsError",
    "TooFewImagesError",
    "image_table",
    "iter_descriptors",
    "Embedding",
    "embed",
    "embed_store",
    "load_embedding",
    "save_embedding",
    "brute_neighbours",
    "nearest",
    "share_table",
    "store_neighbours",
    "TopExamples",
    "top_examples",
    "unit_crops",
]
