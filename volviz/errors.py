"""Every error that means "the input is wrong, here is what to do" derives from ``VolvizError``.

The CLI prints a ``VolvizError`` as one line and exits 2; anything else is a bug and keeps its
traceback. The families subclass ``ValueError`` or ``RuntimeError`` as well, so library callers who
catch those keep working. This module is the lowest layer: it imports nothing from volviz.
"""

from __future__ import annotations


class VolvizError(Exception):
    """A user-facing error: its message names the problem and what to do about it."""


class UserError(VolvizError):
    """A command-line argument that cannot be used as given."""


class ModelLoadError(VolvizError, ValueError):
    """The model or its weights cannot be loaded as asked."""


class ImageSourceError(VolvizError, ValueError):
    """The images cannot be found or read."""


class ChannelError(VolvizError, ValueError):
    """An image cannot be converted to the channel count the model expects."""


class LayerSelectionError(VolvizError, ValueError):
    """The layer names, globs or types select nothing usable."""


class SharedModuleError(VolvizError, RuntimeError):
    """A module runs more than once per forward pass, so its activation is ambiguous."""


class CaptureError(VolvizError, RuntimeError):
    """The capture cannot run as asked."""


class TargetError(CaptureError, ValueError):
    """The output neuron asked for (``--target``) does not exist."""


class StoreError(VolvizError, ValueError):
    """The store is missing, damaged, incomplete for the request, or from a newer volviz."""


class SceneError(VolvizError, ValueError):
    """A scene file is missing a key, has a wrong value, or names something unusable."""


class GraphBuildError(VolvizError, ValueError):
    """The network graph cannot be built for this model."""


class ObjectiveError(VolvizError, ValueError):
    """A preferred-input objective names a unit that does not exist."""


class PreferredError(VolvizError, ValueError):
    """Preferred inputs are missing from the store or cannot be computed as asked."""


class AnalysisError(VolvizError, ValueError):
    """A gradient analysis cannot run on this store as asked."""


class NoWeightsError(AnalysisError):
    """The store holds no per-image weight gradients for the layers asked."""


class EmptyClassError(AnalysisError):
    """No image of a class was analysed w.r.t. its own output neuron."""


class NotDifferentiableError(AnalysisError):
    """The model is not differentiable between the output and a layer."""


class ThresholdError(AnalysisError):
    """A pruning threshold outside the range of the measured importances."""


class ServeError(VolvizError, ValueError):
    """The app cannot be served as asked."""


class MissingFileError(VolvizError, FileNotFoundError):
    """A file volviz needs (demo weights, a scene's store) is not where it should be."""
