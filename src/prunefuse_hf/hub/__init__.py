"""Publishing a run: model, surrogate and dataset cards, the selected subset, and the push to the Hub.

It reads a run directory's files and never the trainer, so `PruneFuseTrainer.save_model` and `push_to_hub` can use it."""

from .card_data import ModelCardFacts, SubsetCardFacts, SurrogateCardFacts
from .card_facts import (
    collect_model_card_facts,
    collect_subset_card_facts,
    collect_surrogate_card_facts,
    framework_versions,
)
from .cards import (
    render_dataset_card,
    render_model_card,
    render_surrogate_card,
    template_environment,
    write_model_card,
)
from .pipeline_ready import export_rgb_checkpoint
from .push import PushError, PushResult, push_query_batch, push_run
from .subset import (
    SubsetMismatchError,
    check_pool,
    load_subset,
    rebuild_subset_pool,
    save_subset,
    subset_metadata,
)
