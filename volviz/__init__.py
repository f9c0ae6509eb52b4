"""volviz: look inside trained convolutional networks in 3D."""

__version__ = "0.1.0"
