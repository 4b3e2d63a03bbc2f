"""The data side: loading pools and evaluation splits, decoding images, the image processor and pixel cache (listed
and removed with `list_pixel_caches` / `clear_pixel_caches`), the `DataPool` (who is labeled, in which round) and
the checks of settings against the data and model."""

import lazy_loader

# Each name is imported from its module on first use: importing the package costs nothing.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "image_processor": ["build_image_processor", "model_num_channels", "pretrained_image_processor"],
        "images": ["ImageDecodeError", "first_image", "open_image", "to_model_mode"],
        "labels": ["align_eval_labels", "class_names", "label_array", "num_classes", "resolve_class_names"],
        "loading": [
            "SplitNotFoundError",
            "fashion_mnist_dir",
            "load_image_dataset",
            "load_run_datasets",
            "resolve_dataset_revision",
            "validate_image_dataset",
        ],
        "pixel_cache": [
            "PixelCacheInfo",
            "clear_pixel_caches",
            "evict_least_recently_used",
            "list_pixel_caches",
        ],
        "pixel_dataset": ["PixelDataset"],
        "pool": ["DataPool"],
        "preprocessing": ["ImagePreprocessor", "random_crop_and_flip"],
        "validation": ["check_batchnorm_batch_sizes", "check_input_size", "check_labeling_budget"],
    },
)
