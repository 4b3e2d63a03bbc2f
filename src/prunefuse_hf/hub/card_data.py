"""The facts a card shows, typed (as setfit's card data); `card_text` writes each one as card text and
`card_facts` collects them from a run directory."""

from __future__ import annotations

from dataclasses import dataclass

CITATION = """@misc{kousar2026prunefuse,
  title         = {PruneFuse: Efficient Data Selection via Weight Pruning and Network Fusion},
  author        = {Kousar, Humaira and Bhatti, Hasnain Irshad and Moon, Jaekyun},
  year          = {2026},
  eprint        = {2603.26138},
  archivePrefix = {arXiv},
  primaryClass  = {cs.LG}
}"""


@dataclass
class ModelCardFacts:
    """
    What the fused model's card says, gathered from a finished run by [`collect_model_card_facts`]. Numbers are
    already formatted for reading; `None` removes the sentence or section that would state it.

    Args:
        title (`str`): Heading (the repo's name, else the model type).
        model_repo_id (`str`, *optional*): The model repo the card is pushed to.
        model_source (`str`): What the snippets load: the repo id, else a placeholder path.
        architecture (`str`): The model class (`config.architectures[0]`).
        model_type (`str`, *optional*): `config.model_type`.
        num_channels (`int`): Input channels; 1 needs the processor snippet (`pipeline()` feeds RGB).
        num_labels (`int`, *optional*): Number of classes.
        labels (`str`, *optional*): The class names, comma separated (none when they are `LABEL_N` placeholders).
        example_label (`str`, *optional*): One class name, shown as a possible output of the snippet.
        summary (`str`): How the training data was selected and the model trained, as one clause.
        method (`str`, *optional*): The run's method (`prunefuse`, `svp`, `dense_al`, `random`).
        method_description (`str`, *optional*): What that method does.
        method_overrides (`str`, *optional*): The method's settings the run changed (`fusion: true`).
        base_model (`str`, *optional*): Hub id of the pretrained dense model (the front matter's `base_model`).
        base_model_url (`str`, *optional*): Its address on the endpoint.
        base_model_folder (`str`, *optional*): Folder name of a pretrained dense model given as a local directory.
        from_config (`bool`): Whether the dense model was built from a config with random weights.
        seed (`int`, *optional*): The run's seed.
        dataset_hub_id (`str`, *optional*): Hub id of the training data (`datasets` in the front matter).
        dataset_label (`str`, *optional*): The training data's name in the evaluation results.
        dataset (`str`, *optional*): The training data in markdown (a link, or a local folder's name).
        dataset_details (`str`, *optional*): Split, config, pinned revision and pool draw.
        eval_description (`str`): What the metric was measured on.
        task (`str`): The model's `pipeline()` task (`image-classification`, `object-detection`, ...).
        model_kind (`str`): What the model is in words (`image classifier`, `object detector`, ...).
        metric, metric_name, metric_phrase (`str`): The evaluation metric's key (`accuracy`, `map`, `mean_iou`),
            its name in a table header and in a sentence.
        subset_repo_id, subset_repo_url (`str`, *optional*): The selected subset's dataset repo and address.
        surrogate_repo_id, surrogate_repo_url (`str`, *optional*): The surrogate's model repo and address.
        pool_size, labeled, labeled_fraction (`str`, *optional*): Pool size, labeled examples and their share.
        pruning_ratio (`float`, *optional*): The surrogate's pruning ratio.
        importance (`str`, *optional*): Channel importance criterion.
        dense_params, surrogate_params, params_ratio (`str`, *optional*): Parameter counts and their ratio.
        dense_macs, surrogate_macs, macs_ratio (`str`, *optional*): MACs per example and their ratio.
        image_size (`str`, *optional*): Input size the costs were counted at.
        strategy (`str`, *optional*): Selection strategy.
        num_rounds (`int`, *optional*): Selection rounds.
        round_sizes (`str`, *optional*): The labeled budget round by round.
        surrogate_init (`str`, *optional*): How the surrogate restarted each round.
        sync_every (`int`, *optional*): Re-synchronization period, when the run re-synchronized.
        fusion (`str`): How the final model started.
        distillation (`str`): Whether and how the final model distilled from the surrogate.
        rounds (`list[dict[str, str]]`, *optional*): Per round: `round`, `labeled`, `surrogate_metric`,
            `dense_metric`, `selected`; `None` when no round was evaluated.
        final_metric, final_metric_at_start (`str`, *optional*): The final model's metric, after and before its
            final training.
        final_epochs (`str`, *optional*): Epochs of the final training.
        costs (`list[dict[str, str]]`, *optional*): The compute ledger by purpose: `purpose`, `seconds`, `flops`.
        selection_flops_ratio (`str`, *optional*): Selection FLOPs over those of dense-selector active learning.
        quickstart (`str`): Python code that runs the model on an image through its pipeline.
        recipe (`str`, *optional*): The run's recipe as YAML (secrets removed, local paths shortened).
        recipe_paths_shortened (`bool`): Whether local paths of the recipe were shortened to their last part.
        versions (`dict[str, str]`): Library versions.
        citation (`str`): BibTeX of the paper.
    """

    title: str
    model_repo_id: str | None
    model_source: str
    architecture: str
    model_type: str | None
    num_channels: int
    num_labels: int | None
    labels: str | None
    example_label: str | None
    summary: str
    method: str | None
    method_description: str | None
    method_overrides: str | None
    base_model: str | None
    base_model_url: str | None
    base_model_folder: str | None
    from_config: bool
    seed: int | None
    dataset_hub_id: str | None
    dataset_label: str | None
    dataset: str | None
    dataset_details: str | None
    eval_description: str
    task: str
    model_kind: str
    metric: str
    metric_name: str
    metric_phrase: str
    subset_repo_id: str | None
    subset_repo_url: str | None
    surrogate_repo_id: str | None
    surrogate_repo_url: str | None
    pool_size: str | None
    labeled: str | None
    labeled_fraction: str | None
    pruning_ratio: float | None
    importance: str | None
    dense_params: str | None
    surrogate_params: str | None
    params_ratio: str | None
    dense_macs: str | None
    surrogate_macs: str | None
    macs_ratio: str | None
    image_size: str | None
    strategy: str | None
    num_rounds: int | None
    round_sizes: str | None
    surrogate_init: str | None
    sync_every: int | None
    fusion: str
    distillation: str
    rounds: list[dict[str, str]] | None
    final_metric: str | None
    final_metric_at_start: str | None
    final_epochs: str | None
    costs: list[dict[str, str]] | None
    selection_flops_ratio: str | None
    quickstart: str
    recipe: str | None
    recipe_paths_shortened: bool
    versions: dict[str, str]
    citation: str = CITATION


@dataclass
class SurrogateCardFacts:
    """
    What the surrogate's card says, gathered by [`collect_surrogate_card_facts`].

    Args:
        title (`str`): Heading.
        repo_id (`str`): The surrogate's model repo.
        model_type (`str`, *optional*): The family.
        pruning_ratio (`float`, *optional*): Ratio it was pruned with.
        importance (`str`, *optional*): Channel importance criterion.
        surrogate_params, dense_params, params_ratio (`str`, *optional*): Parameter counts and their ratio.
        base_model (`str`, *optional*): Hub id of the pretrained dense model it was pruned from.
        model_repo_id, model_repo_url (`str`, *optional*): The fused model's repo and address.
        subset_repo_id, subset_repo_url (`str`, *optional*): The selected subset's repo and address.
        pruning_path (`str`, *optional*): `"replay"` when the surrogate takes the general path (its config is the
            dense one; `prunefuse_hf.load_surrogate` rebuilds it), otherwise a narrowed-config checkpoint.
        citation (`str`): BibTeX of the paper.
    """

    title: str
    repo_id: str
    model_type: str | None
    pruning_ratio: float | None
    importance: str | None
    surrogate_params: str | None
    dense_params: str | None
    params_ratio: str | None
    base_model: str | None
    model_repo_id: str | None
    model_repo_url: str | None
    subset_repo_id: str | None
    subset_repo_url: str | None
    pruning_path: str | None = None
    task: str = "image-classification"
    citation: str = CITATION


@dataclass
class SubsetCardFacts:
    """
    What the selected subset's dataset card says, gathered by [`collect_subset_card_facts`].

    Args:
        title (`str`): Heading (also the card's `pretty_name`).
        repo_id (`str`): The dataset repo, or a placeholder path.
        model_repo_id, model_repo_url (`str`, *optional*): The model trained on the subset.
        source_hub_id (`str`, *optional*): Hub id of the source dataset (`source_datasets`).
        source (`str`, *optional*): The source in markdown (a link, or a local folder's name).
        source_details (`str`, *optional*): Split, config and pinned revision.
        source_revision (`str`, *optional*): The source's recorded revision.
        num_selected, pool_size (`str`): Selected examples, and the size of the pool they came from.
        pool_fingerprint (`str`): The pool's `datasets` fingerprint.
        max_pool_size (`str`, *optional*): Size of the seeded draw the pool is, when it is one.
        pool_seed (`int`, *optional*): Seed of that draw.
        strategy (`str`, *optional*): Selection strategy.
        num_rounds (`int`, *optional*): Selection rounds.
        label_column (`str`): The label column of the rebuilt rows.
        has_source_index, has_labels, has_image_path, has_examples (`bool`): Which optional columns and files
            the subset has.
        rounds (`list[dict[str, str]]`): Per round: `round`, `count`, `strategy`.
        class_counts (`list[dict[str, str]]`, *optional*): Per class of the selection: `name`, `count`, `share`.
        task (`str`): The run's `pipeline()` task (the card's `task_categories`).
        annotation_column (`str`, *optional*): The selection's column of the annotations people gave (boxes, masks).
        citation (`str`): BibTeX of the paper.
    """

    title: str
    repo_id: str
    model_repo_id: str | None
    model_repo_url: str | None
    source_hub_id: str | None
    source: str | None
    source_details: str | None
    source_revision: str | None
    num_selected: str
    pool_size: str
    pool_fingerprint: str
    max_pool_size: str | None
    pool_seed: int | None
    strategy: str | None
    num_rounds: int | None
    label_column: str
    has_source_index: bool
    has_labels: bool
    has_image_path: bool
    has_examples: bool
    rounds: list[dict[str, str]]
    class_counts: list[dict[str, str]] | None
    task: str = "image-classification"
    annotation_column: str | None = None
    citation: str = CITATION
