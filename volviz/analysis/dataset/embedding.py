"""2-D / 3-D maps of a layer's descriptors: PCA, t-SNE, UMAP ([Hong-L4]'s t-SNE of CNN codes,
[PreferredInputs2016]'s descriptor clusterings).

Every method starts with an exact PCA computed from streamed sums (``sum x``, ``sum x x^T``, one
batch of the store at a time), so the working memory is ``D x D`` float64 plus one batch, not the
whole ``(n, D)`` matrix; t-SNE and UMAP then run on the first :data:`PRE_PCA` components (the
usual pre-reduction: it removes noise dimensions and makes the neighbour search cheap). t-SNE is
scikit-learn's Barnes-Hut below :data:`FFT_FROM` images and openTSNE's FFT-accelerated one above
(2-D). Coordinates and the settings that made them can be kept in the store
(``results("embedding")``) for the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volviz.analysis.dataset.descriptors import (
    DatasetError,
    TooFewImagesError,
    descriptor_dim,
    image_table,
    iter_descriptors,
)

__all__ = [
    "METHODS",
    "MIN_IMAGES",
    "PRE_PCA",
    "FFT_FROM",
    "Embedding",
    "PcaFit",
    "pca_fit",
    "pca_stream",
    "embed",
    "embed_store",
    "save_embedding",
    "load_embedding",
]

METHODS = ("pca", "tsne", "umap")
#: any dims+1 points fit a dims-D map exactly, and t-SNE / UMAP need a few neighbours per image
MIN_IMAGES = 5
PRE_PCA = 50
FFT_FROM = 5000
#: above this descriptor length the D x D covariance is too big: PCA on the loaded matrix instead
MAX_COV_DIM = 4096


@dataclass
class Embedding:
    coords: np.ndarray  # (n, dims) float32
    rows: np.ndarray  # (n,) store image indices
    settings: dict = field(default_factory=dict)


@dataclass
class PcaFit:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), rows of unit norm, sign fixed
    variance: np.ndarray  # (k,) explained variance

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) @ self.components.T).astype(np.float32)


def _check_count(n: int, dims: int) -> None:
    if n < MIN_IMAGES:
        raise TooFewImagesError(
            f"an embedding of {n} image{'s' if n != 1 else ''} shows nothing: any {dims + 1} "
            f"points fit a {dims}-D map exactly, and t-SNE / UMAP place an image among its "
            f"neighbours, so at least {MIN_IMAGES} images are needed; capture more images"
        )


def _from_moments(s1: np.ndarray, s2: np.ndarray, n: int, k: int) -> PcaFit:
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:k]
    comps = evecs[:, order].T
    # sign: the largest loading of each component is positive (as sklearn's svd_flip)
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    comps = comps * np.where(signs == 0, 1, signs)[:, None]
    return PcaFit(mean, comps, np.clip(evals[order], 0, None) * n / max(n - 1, 1))


def pca_fit(x: np.ndarray, k: int) -> PcaFit:
    """Exact PCA of an in-memory ``(n, D)`` matrix (the same numbers :func:`pca_stream` gives)."""
    x = np.asarray(x, np.float64)
    return _from_moments(x.sum(0), x.T @ x, len(x), min(k, x.shape[1]))


def pca_stream(batches, k: int) -> tuple[PcaFit, int]:
    """PCA from an iterable of ``(rows, (b, D))`` batches; memory ``D x D`` + one batch."""
    s1 = s2 = None
    n = 0
    for _, d in batches:
        d = d.astype(np.float64)
        s1 = d.sum(0) if s1 is None else s1 + d.sum(0)
        s2 = d.T @ d if s2 is None else s2 + d.T @ d
        n += len(d)
    if s1 is None:
        raise TooFewImagesError("no images to embed")
    return _from_moments(s1, s2, n, min(k, len(s1))), n


def _tsne(x: np.ndarray, dims: int, seed: int, perplexity: float | None, n_jobs: int) -> tuple[np.ndarray, dict]:
    n = len(x)
    perp = float(perplexity) if perplexity else min(30.0, max(2.0, (n - 1) / 3.0))
    if perp >= n:
        raise DatasetError(f"t-SNE perplexity {perp} must be below the number of images ({n})")
    if dims == 2 and n > FFT_FROM:
        try:
            from openTSNE import TSNE as OpenTSNE
        except ImportError:  # optional: Barnes-Hut is exact enough, only slower
            OpenTSNE = None
        if OpenTSNE is not None:
            y = OpenTSNE(
                n_components=2,
                perplexity=perp,
                negative_gradient_method="fft",
                random_state=seed,
                n_jobs=n_jobs,
                verbose=False,
            ).fit(x)
            return np.asarray(y, np.float32), {"perplexity": perp, "tsne": "openTSNE-fft"}
    from sklearn.manifold import TSNE

    y = TSNE(
        n_components=dims, perplexity=perp, init="pca", learning_rate="auto", random_state=seed, n_jobs=n_jobs
    ).fit_transform(x)
    return y.astype(np.float32), {"perplexity": perp, "tsne": "sklearn-barnes-hut"}


def _umap(x: np.ndarray, dims: int, seed: int, n_neighbors: int | None, n_jobs: int) -> tuple[np.ndarray, dict]:
    import warnings

    import umap

    n = len(x)
    nn = int(n_neighbors) if n_neighbors else min(15, n - 1)
    if not 2 <= nn < n:
        raise DatasetError(f"UMAP n_neighbors must be between 2 and the number of images - 1 ({n - 1}), got {nn}")
    with warnings.catch_warnings():  # "n_jobs overridden by random_state": determinism is the point
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        warnings.filterwarnings("ignore", message=".*gradient function is not yet implemented.*")
        y = umap.UMAP(
            n_components=dims, n_neighbors=nn, random_state=seed, n_jobs=n_jobs, init="spectral" if n > 100 else "pca"
        ).fit_transform(x)
    return np.asarray(y, np.float32), {"n_neighbors": nn}


def _finish(pre: np.ndarray, method: str, dims: int, seed: int, perplexity, n_neighbors, n_jobs):
    if method == "pca":
        return pre[:, :dims], {}
    if method == "tsne":
        return _tsne(pre, dims, seed, perplexity, n_jobs)
    return _umap(pre, dims, seed, n_neighbors, n_jobs)


def _check_args(method: str, dims: int) -> None:
    if method not in METHODS:
        raise DatasetError(f"unknown embedding method {method!r}; valid: {', '.join(METHODS)}")
    if dims not in (2, 3):
        raise DatasetError(f"--dims must be 2 or 3, got {dims}")


def embed(
    x: np.ndarray,
    method: str = "pca",
    dims: int = 2,
    *,
    seed: int = 0,
    perplexity: float | None = None,
    n_neighbors: int | None = None,
    n_jobs: int = 1,
) -> np.ndarray:
    """``(n, dims)`` coordinates of the rows of ``x (n, D)``."""
    _check_args(method, dims)
    x = np.asarray(x, np.float32)
    _check_count(len(x), dims)
    fit = pca_fit(x, dims if method == "pca" else PRE_PCA)
    return _finish(_pad(fit.transform(x), dims), method, dims, seed, perplexity, n_neighbors, n_jobs)[0]


def _pad(y: np.ndarray, dims: int) -> np.ndarray:
    """A descriptor shorter than ``dims`` (a 2-unit layer in 3-D) gets zero coordinates."""
    return y if y.shape[1] >= dims else np.pad(y, ((0, 0), (0, dims - y.shape[1])))


def embed_store(
    store,
    layer: str,
    method: str = "pca",
    dims: int = 2,
    *,
    pool: str = "mean",
    rows=None,
    seed: int = 0,
    perplexity: float | None = None,
    n_neighbors: int | None = None,
    n_jobs: int = 1,
    batch: int | None = None,
) -> Embedding:
    """Embed the captured images of ``store`` by their ``layer`` descriptors (two streamed passes)."""
    _check_args(method, dims)
    table = image_table(store, rows)
    rows = table["rows"]
    _check_count(len(rows), dims)
    k = dims if method == "pca" else PRE_PCA
    if descriptor_dim(store, layer, pool) <= MAX_COV_DIM:
        fit, _ = pca_stream(iter_descriptors(store, layer, rows, pool, batch), k)
        pre = np.concatenate([fit.transform(d) for _, d in iter_descriptors(store, layer, rows, pool, batch)])
    else:
        from sklearn.decomposition import PCA

        x = np.concatenate([d for _, d in iter_descriptors(store, layer, rows, pool, batch)])
        k = min(k, *x.shape)
        pca = PCA(k, svd_solver="randomized", random_state=seed).fit(x)
        fit = PcaFit(pca.mean_, pca.components_, pca.explained_variance_)
        pre = pca.transform(x).astype(np.float32)
    coords, extra = _finish(_pad(pre, dims), method, dims, seed, perplexity, n_neighbors, n_jobs)
    settings = {
        "layer": layer,
        "method": method,
        "dims": dims,
        "pool": pool,
        "seed": seed,
        "n_images": len(rows),
        "pre_pca": None if method == "pca" else int(pre.shape[1]),
        "explained_variance": [float(v) for v in fit.variance[:dims]],
        **extra,
    }
    return Embedding(np.ascontiguousarray(coords, np.float32), rows, settings)


def save_embedding(store, emb: Embedding) -> None:
    """Keep the coordinates in ``results("embedding")/<layer>`` (the store opened ``r+``)."""
    g = store.results("embedding").create(emb.settings["layer"])
    n, d = emb.coords.shape
    g.create_array("coords", shape=(n, d), chunks=(max(n, 1), d), dtype="float32", fill_value=0)[:] = emb.coords
    g.create_array("rows", shape=(n,), chunks=(max(n, 1),), dtype="int64", fill_value=-1)[:] = emb.rows
    g.attrs.update({"settings": emb.settings})


def load_embedding(store, layer: str) -> Embedding | None:
    """The embedding kept for ``layer`` (None when there is none)."""
    g = store.results("embedding").group(layer)
    if g is None or "coords" not in g:
        return None
    return Embedding(
        np.asarray(g["coords"][:], np.float32), np.asarray(g["rows"][:], np.int64), dict(g.attrs.get("settings", {}))
    )
