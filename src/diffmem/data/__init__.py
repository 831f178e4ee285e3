"""Image data: Fashion-MNIST IDX files, image folders, arrays and manifests."""

from diffmem.data.images import (
    FASHION_MNIST_CLASSES,
    IMAGE_SUFFIXES,
    load_fashion_mnist,
    read_image,
    to_model_input,
    to_model_range,
)
from diffmem.data.sources import Source, iter_inputs, load_images

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES",
    "Source",
    "iter_inputs",
    "load_fashion_mnist",
    "load_images",
    "read_image",
    "to_model_input",
    "to_model_range",
]
