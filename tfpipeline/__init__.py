"""tfpipeline: from a folder of images to a tuned, evaluated, explained and served Keras model."""

__version__ = "0.1.0"
