"""Publishing a run: model, surrogate and dataset cards, the selected subset, and the push to the Hub.

It reads a run directory's files and never the trainer, so `PruneFuseTrainer.save_model` and `push_to_hub` can use it."""

import lazy_loader

# Each name is imported from its module on first use: importing the package costs nothing.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "card_data": ["ModelCardFacts", "SubsetCardFacts", "SurrogateCardFacts"],
        "card_facts": [
            "collect_model_card_facts",
            "collect_subset_card_facts",
            "collect_surrogate_card_facts",
            "framework_versions",
        ],
        "cards": [
            "render_dataset_card",
            "render_model_card",
            "render_surrogate_card",
            "template_environment",
            "write_model_card",
        ],
        "pipeline_ready": ["export_rgb_checkpoint"],
        "push": ["PushError", "PushResult", "push_query_batch", "push_run"],
        "subset": ["load_subset", "save_subset", "subset_metadata", "with_people_annotations"],
        "subset_source": ["SubsetMismatchError", "check_pool", "rebuild_subset_pool"],
    },
)
