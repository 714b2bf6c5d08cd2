"""diffgen: text-to-image diffusion from the command line and as a small library."""

__version__ = "0.1.0"
