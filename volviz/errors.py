"""The errors that mean "the user's input is wrong": the CLI prints them as one line and exits 2."""
from volviz.capture.layers import LayerSelectionError
from volviz.capture.run import CaptureError
from volviz.capture.tap import SharedModuleError
from volviz.sources.images import ImageSourceError
from volviz.sources.models import ModelLoadError
from volviz.sources.preprocess import ChannelError
from volviz.store.store import StoreError

USER_ERRORS = (LayerSelectionError, CaptureError, SharedModuleError, ImageSourceError,
               ModelLoadError, ChannelError, StoreError, FileNotFoundError, ValueError)
