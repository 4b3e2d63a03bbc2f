"""The data side: loading pools and evaluation splits, decoding images, the image processor and pixel cache (listed
and removed with `list_pixel_caches` / `clear_pixel_caches`), the `DataPool` (who is labeled, in which round) and
the checks of settings against the data and model."""

from .image_processor import build_image_processor, model_num_channels, pretrained_image_processor
from .images import ImageDecodeError, first_image, open_image, to_model_mode
from .labels import align_eval_labels, class_names, label_array, num_classes, resolve_class_names
from .loading import (
    SplitNotFoundError,
    fashion_mnist_dir,
    load_image_dataset,
    load_run_datasets,
    resolve_dataset_revision,
    validate_image_dataset,
)
from .pixel_cache import PixelCacheInfo, clear_pixel_caches, evict_least_recently_used, list_pixel_caches
from .pool import DataPool
from .preprocessing import ImagePreprocessor, PixelDataset, random_crop_and_flip
from .validation import check_batchnorm_batch_sizes, check_input_size, check_labeling_budget
