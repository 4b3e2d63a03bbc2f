"""The surgery: the family registry, loading image classifiers, pruning at initialization into a surrogate with
its `PruningPlan`, fusing the trained surrogate back into the dense model, and the FLOPs of both."""

import lazy_loader

# Each name is imported from its module on first use: importing the package costs nothing.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "cost": ["ModelCost", "model_cost"],
        "families": [
            "DETECTION_ADAPTERS",
            "DETECTION_FAMILIES",
            "FamilyAdapter",
            "GENERAL_FAMILIES",
            "GeneralFamily",
            "REFUSED_FAMILIES",
            "get_family_adapter",
        ],
        "fusion": ["fuse_into_dense"],
        "modeling": ["build_dense_model", "check_model_path", "load_image_classifier"],
        "narrowing": ["scaled_width"],
        "plan": ["PruningPlan", "architecture_fields", "config_hash"],
        "prune": ["prune_model", "validate_pruning_ratio"],
        "replay": ["load_surrogate", "rebuild_surrogate", "save_surrogate"],
        "support": [
            "check_supported_model",
            "classifier_class_name",
            "family_model_classes",
            "image_classification_classes",
            "object_detection_classes",
            "refused_model_classes",
            "support_table_markdown",
        ],
        "tracing": ["example_pixel_values"],
    },
)
