"""The surgery: the family registry (image classifiers and object detectors), loading image classifiers, pruning at initialization into a surrogate with
its `PruningPlan`, fusing the trained surrogate back into the dense model, and the FLOPs of both."""

from .cost import ModelCost, model_cost
from .families import (
    DETECTION_ADAPTERS,
    DETECTION_FAMILIES,
    GENERAL_FAMILIES,
    REFUSED_FAMILIES,
    FamilyAdapter,
    GeneralFamily,
    attention_heads,
    example_pixel_values,
    get_family_adapter,
    scaled_width,
)
from .fusion import fuse_into_dense
from .modeling import build_dense_model, check_model_path, load_image_classifier
from .plan import PruningPlan, architecture_fields, config_hash
from .prune import prune_model, validate_pruning_ratio
from .replay import load_surrogate, rebuild_surrogate, save_surrogate
from .support import (
    check_supported_model,
    classifier_class_name,
    family_model_classes,
    image_classification_classes,
    object_detection_classes,
    refused_model_classes,
    support_table_markdown,
)
