"""Image data: Fashion-MNIST IDX files, image folders, arrays and manifests."""

from diffmem.data.images import (
    FASHION_MNIST_CLASSES,
    IMAGE_SUFFIXES,
    load_fashion_mnist,
    load_image_folder,
    load_images,
    read_image,
    to_model_range,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES",
    "load_fashion_mnist",
    "load_image_folder",
    "load_images",
    "read_image",
    "to_model_range",
]
