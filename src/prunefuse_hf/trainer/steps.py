"""The steps of PruneFuse, one function each, in the order a run takes them (Kousar, Bhatti and Moon,
arXiv:2603.26138): `init_run` prunes θ0 into the surrogate and draws the first query; per round, `train_surrogate`,
`train_dense` (the fused model, or a fresh dense one), `sync` (fuse, train, prune again), `select` (score the
unlabeled pool and write the next query) and `label` (the query's labels come in: from the oracle in simulation,
from annotators otherwise); then `report`. Each takes the `PruneFuseTrainer` whose run it advances, reads and writes
its public run state (the step contract, in `run_plan`) and returns the facts the run logs; `run_plan.run_step`
writes `state.json` after each one. The models they train, evaluate, load and save: `step_models`.
"""

from __future__ import annotations

import copy
import time

import numpy as np
from transformers.utils import logging

from ..annotation.identity import query_images
from ..annotation.labels import LabelBatch
from ..annotation.queries import query_contents, query_directory, surrogate_model_version
from ..annotation.rounds import skipped_indices
from ..annotation.store import LabelStore, query_is_complete
from ..constants import (
    DENSE_BASE_DIR,
    DENSE_INIT_DIR,
    FUSED_DIR,
    QUERY_IMAGES,
    SURROGATE_DIR,
    SURROGATE_INIT_DIR,
    TRAINER_DIR,
)
from ..hub.push import push_query_batch
from ..pruning.cost import FORWARD_FLOPS_PER_MAC, model_cost
from ..pruning.plan import PruningPlan, config_hash
from ..pruning.prune import prune_model
from ..pruning.replay import load_surrogate
from ..selection.proxy import normalize_features, train_linear_probe
from ..selection.typiclust import typiclust_select
from .features import (
    distill_surrogate,
    distillation_rows,
    load_pool_features,
    pool_features,
    refresh_probe_features,
    sample_features,
    score_rows,
)
from .report import write_report
from .step_models import (
    evaluate_model,
    evaluates_during_training,
    fresh_dense_model,
    fused_model,
    round_surrogate,
    save_checkpoint,
    train_model,
)

logger = logging.get_logger(__name__)


def init_run(trainer) -> dict:
    args = trainer.args
    dense = trainer.model
    if len(trainer.initial_labels):
        _store_labels(trainer, trainer.initial_labels, round_=1)
        trainer.pool.label(trainer.initial_labels.pool_indices, round=1, labels=trainer.initial_labels.labels)
    if args.initial_labeled_size and args.initial_strategy == "random":
        # The first query: a seeded random draw from the unlabeled pool (TypiClust's is drawn once pruned).
        rng = np.random.default_rng(args.selection_seed)
        drawn = np.sort(
            rng.choice(trainer.pool.unlabeled_indices, size=args.initial_labeled_size, replace=False)
        )
        _set_query(trainer, 1, drawn, scores=None, strategy="random")
    # Pruned when the trainer was built (a model that cannot be pruned is refused before any work).
    pruned, trainer.pruned_at_init = trainer.pruned_at_init, None
    surrogate, plan = pruned or prune_model(dense, args.pruning_ratio, importance=args.importance)
    height, width = trainer.input_shape[-2:]
    dense_cost, surrogate_cost = (
        model_cost(dense, (height, width)),
        model_cost(surrogate, (height, width)),
    )
    trainer.progress["costs"] = {
        "image_size": [height, width],
        "dense": dense_cost.to_dict(),
        "surrogate": surrogate_cost.to_dict(),
        "dense_config_hash": config_hash(dense.config),
    }
    setup = _setup_selection(trainer, dense, surrogate, plan)
    if trainer.is_world_process_zero():
        trainer.run_dir.save_dir(DENSE_INIT_DIR, dense.save_pretrained)
        trainer.run_dir.save_dir(DENSE_BASE_DIR, dense.save_pretrained)
        trainer.run_dir.save_dir(
            SURROGATE_INIT_DIR, lambda d: save_checkpoint(trainer, surrogate, d, plan=plan)
        )
    return {
        "seed_labels": len(trainer.initial_labels) or None,
        "dense_params": dense_cost.params,
        "surrogate_params": surrogate_cost.params,
        "macs_ratio": round(surrogate_cost.macs / dense_cost.macs, 4),
        "setup_seconds": round(setup["seconds"], 3) if setup else None,
        "distilled_feature_mse": setup.get("distillation", {}).get("mse_after") if setup else None,
    }


def _setup_selection(trainer, dense, surrogate, plan) -> dict | None:
    """Before round 1, what only selection needs: TypiClust's first query, the surrogate's label-free distillation,
    the linear probe's pool features. Their cost is round 1's `setup` record (booked as selection)."""
    args = trainer.args
    booked, parts = {}, {}

    def features_of(model, role):
        features, record = pool_features(trainer, model, role)
        booked.setdefault(record["file"], record)  # each pass once, even when read back
        return features, record["file"]

    if args.initial_labeled_size and args.initial_strategy == "typiclust":
        features, _ = features_of(dense, "dense")
        started = time.perf_counter()
        unlabeled, labeled = trainer.pool.unlabeled_indices, trainer.pool.labeled_indices
        selection = typiclust_select(
            args.initial_labeled_size,
            pool_indices=unlabeled,
            features=features[unlabeled],
            labeled_features=features[labeled] if len(labeled) else None,
            seed=args.selection_seed,
        )
        parts["typiclust"] = {"seconds": time.perf_counter() - started, "flops": 0.0, "dense_flops": 0.0}
        _set_query(trainer, 1, selection.indices, scores=selection.scores, strategy="typiclust")
    if args.surrogate_distill_epochs > 0:
        rows = distillation_rows(len(trainer.pool), args.surrogate_distill_epochs, args.seed)
        if rows is None:
            dense_features = features_of(dense, "dense")[0]
        else:  # a share of one epoch needs the dense model's features of that share only
            dense_features, parts["features_dense_sample"] = sample_features(trainer, dense, rows)
        parts["distillation"] = distill_surrogate(
            trainer, surrogate, plan, dense_features, args.surrogate_distill_epochs, rows=rows
        )
    if args.selector == "linear_probe" and trainer.strategy.needs:
        on_dense = args.pruning_ratio == 0
        # The proxy's features: the dense model's at p = 0 (pretrained), else the (distilled) surrogate's.
        _, trainer.progress["probe_features"] = features_of(
            dense if on_dense else surrogate, "dense" if on_dense else "surrogate"
        )
    if not booked and not parts:
        return None
    parts.update({f"features_{record['role']}": record for record in booked.values()})
    record = {key: sum(part[key] for part in parts.values()) for key in ("seconds", "flops", "dense_flops")}
    _round(trainer, 1)["setup"] = {**record, "parts": parts}
    return {**record, **parts}


def train_surrogate(trainer, round_: int) -> dict:
    args = trainer.args
    warm = args.surrogate_init == "warm" and (trainer.run_dir.surrogate_dir / "config.json").exists()
    start_dir = trainer.run_dir.surrogate_dir if warm else trainer.run_dir / SURROGATE_INIT_DIR
    plan = PruningPlan.from_pretrained(trainer.run_dir / SURROGATE_INIT_DIR)
    surrogate = load_surrogate(start_dir, plan)
    training_args = args.surrogate_training_args(str(trainer.run_dir / TRAINER_DIR))
    record = train_model(trainer, surrogate, training_args, round_, role="surrogate", seed_offset=1)
    metric = trainer.examples.metric
    # What the training is for decides where the cost ledger books it.
    selects = round_ <= args.num_rounds and bool(trainer.strategy.needs) and args.selector == "trained"
    record["purpose"] = "selection" if selects else "fusion_teacher"
    if trainer.is_world_process_zero():
        trainer.run_dir.save_dir(SURROGATE_DIR, lambda d: save_checkpoint(trainer, surrogate, d, plan=plan))
    _round(trainer, round_)["surrogate"] = record
    trainer.trained_surrogate = (round_, surrogate)
    return {"round": round_, "labeled": record["labeled"], f"surrogate_{metric}": record[metric]}


def train_dense(trainer, round_: int) -> dict:
    args = trainer.args
    teacher = round_surrogate(trainer, round_) if args.distill_alpha > 0 else None
    model = fused_model(trainer, round_) if args.fusion else fresh_dense_model(trainer, round_)
    training_args = args.dense_training_args(str(trainer.run_dir / TRAINER_DIR))
    # The fresh model's start accuracy is only worth an evaluation when it opens an accuracy curve.
    start_accuracy = None
    if args.fusion or evaluates_during_training(training_args):
        # On a copy: evaluating marks a model as prepared, and Accelerate would then not wrap it in DDP for its
        # training (the processes' gradients would never be averaged).
        start_accuracy = (evaluate_model(trainer, copy.deepcopy(model)) or {}).get(trainer.examples.metric)
    final = round_ == args.num_rounds + 1
    record = train_model(
        trainer, model, training_args, round_, role="dense", seed_offset=2, teacher=teacher, final=final
    )
    metric = trainer.examples.metric
    record[f"{metric}_at_start"] = start_accuracy
    started_evaluated = any(point["step"] == 0 for point in record.get("curve", []))  # eval_on_start
    if "curve" in record and start_accuracy is not None and not started_evaluated:
        record["curve"].insert(0, {"step": 0, metric: start_accuracy})
    if args.refreshes_proxy(round_):
        # The refresh needs this training: it is selection cost, as dense AL's selector trainings are (even when
        # `eval_dense_every_round` would have trained it for the accuracy curve anyway).
        record["purpose"] = "selection"
        _round(trainer, round_)["proxy_refresh"] = refresh_probe_features(trainer, model)
    _round(trainer, round_)["dense"] = record
    if final:
        trainer.progress["final"] = {**record, "labeled": trainer.pool.num_labeled}
        trainer.model = trainer.model_wrapped = model
        if trainer.is_world_process_zero():
            trainer.run_dir.save_dir(FUSED_DIR, lambda d: save_checkpoint(trainer, model, d))
    role = "fused" if args.fusion else "dense"
    return {
        "round": round_,
        "labeled": record["labeled"],
        f"{role}_{metric}_at_start": start_accuracy,
        f"{role}_{metric}": record[metric],
    }


def sync(trainer, round_: int) -> dict:
    # Fuse, train the fused model, and prune it again: the next surrogate starts from what the dense model
    # learned, and the next fusion writes into this trained dense model.
    args = trainer.args
    fused = fused_model(trainer, round_)
    training_args = args.dense_training_args(str(trainer.run_dir / TRAINER_DIR))
    record = train_model(trainer, fused, training_args, round_, role="dense", seed_offset=3)
    surrogate, plan = prune_model(fused, args.pruning_ratio, importance=args.importance)
    if trainer.is_world_process_zero():
        trainer.run_dir.save_dir(DENSE_BASE_DIR, fused.save_pretrained)
        trainer.run_dir.save_dir(
            SURROGATE_INIT_DIR, lambda d: save_checkpoint(trainer, surrogate, d, plan=plan)
        )
    _round(trainer, round_)["sync"] = record
    return {"round": round_, f"synced_{trainer.examples.metric}": record[trainer.examples.metric]}


def select(trainer, round_: int) -> dict:
    args = trainer.args
    query_size = args.query_sizes()[round_ - 1]
    unlabeled_indices = trainer.pool.unlabeled_indices
    if args.annotation == "human":
        # Images annotators skipped are not queried again (unless the ingest asked for it).
        skipped = skipped_indices(trainer.run_dir.path, for_selection=True)
        if skipped:
            unlabeled_indices = np.setdiff1d(unlabeled_indices, np.concatenate(list(skipped.values())))
    started = time.perf_counter()
    outputs, scored, model, probe = {}, 0, None, None
    costs = trainer.progress["costs"]
    if trainer.strategy.needs and args.selector == "linear_probe":
        # A linear head on the frozen features computed before round 1: no forward pass of any network here.
        features = load_pool_features(trainer, trainer.progress["probe_features"])
        labeled = trainer.pool.labeled_indices
        probe = train_linear_probe(features[labeled], trainer.pool.labels[labeled], len(trainer.class_names))
        candidates = unlabeled_indices
        if "probs" in trainer.strategy.needs:
            outputs["probs"] = probe.probs(features[candidates])
        if "features" in trainer.strategy.needs:
            outputs["features"] = normalize_features(features[candidates])
        if "mc_probs" in trainer.strategy.needs:  # dropquery: dropout on the probe's input features
            outputs["mc_probs"] = probe.dropout_probs(
                features[candidates],
                args.mc_samples,
                args.dropquery_dropout,
                seed=args.selection_seed + round_,
            )
        if trainer.strategy.uses_labeled_features:
            outputs["labeled_features"] = normalize_features(features[labeled])
        # The head's fit (each L-BFGS evaluation is a forward and a backward pass over the labeled features) and
        # its application to the candidates; dense AL would have run the dense model over the candidates.
        passes = 1 + (args.mc_samples if "mc_probs" in trainer.strategy.needs else 0)
        flops = passes * probe.flops(len(candidates)) + 3 * probe.flops(len(labeled)) * probe.iterations
        dense_flops = FORWARD_FLOPS_PER_MAC * costs["dense"]["macs"] * len(candidates)
    elif trainer.strategy.needs:
        model = round_surrogate(trainer, round_)
        wanted = trainer.examples.outputs(trainer.strategy)
        # Shardable strategies select from each process's own shard: no process holds the whole pool's
        # scores or features. The labeled set's features (kcenter_greedy) are gathered everywhere.
        sharded = trainer.strategy.shardable
        unlabeled = score_rows(trainer, model, unlabeled_indices, wanted, gather=not sharded)
        # A task's per-image MC-dropout scores are the scores BALD ranks.
        outputs = {("scores" if name == "mc_scores" else name): getattr(unlabeled, name) for name in wanted}
        if sharded:
            outputs["accelerator"] = trainer.accelerator
        scored = len(unlabeled_indices) * (args.mc_samples if {"mc_probs", "mc_scores"} & set(wanted) else 1)
        if trainer.strategy.uses_labeled_features:
            labeled = score_rows(trainer, model, trainer.pool.labeled_indices, ("features",))
            outputs["labeled_features"] = labeled.features
            scored += len(labeled)
        candidates = unlabeled.pool_indices
    else:
        candidates = unlabeled_indices
    selection = trainer.strategy.select(
        query_size, pool_indices=candidates, seed=args.selection_seed + round_, **outputs
    )
    if probe is None:
        flops = FORWARD_FLOPS_PER_MAC * costs["surrogate"]["macs"] * scored
        dense_flops = FORWARD_FLOPS_PER_MAC * costs["dense"]["macs"] * scored
    _round(trainer, round_)["selection"] = {
        "strategy": trainer.strategy.name,
        "selector": args.selector,
        "query_size": query_size,
        "scored_examples": scored,
        "seconds": time.perf_counter() - started,
        "flops": flops,
        "dense_flops": dense_flops,
    }
    _set_query(
        trainer, round_ + 1, selection.indices, scores=selection.scores, strategy=trainer.strategy.name
    )
    if args.annotation == "human" and trainer.strategy.needs and len(selection):
        # The surrogate's guess for each queried image: annotators confirm or correct it (Label Studio
        # pre-annotations, labels.csv columns).
        indices = np.asarray(selection.indices, dtype=np.int64)
        if probe is not None:
            probs = probe.probs(features[indices]).numpy()
            guesses = {"predictions": probs.argmax(axis=1).tolist(),
                       "prediction_scores": probs.max(axis=1).round(4).tolist()}  # fmt: skip
        else:
            guesses = trainer.examples.query_guesses(
                model, indices, args=args, accelerator=trainer.accelerator
            )
        trainer.progress["queries"][str(round_ + 1)].update(guesses)
    record = _round(trainer, round_)["selection"]
    return {
        "round": round_,
        "picked": len(selection),
        "strategy": trainer.strategy.name,
        "scored": scored,
        "selection_flops": record["flops"],
        "dense_equivalent_flops": record["dense_flops"],
    }


def label(trainer, round_: int) -> dict | None:
    """Labels come in for the query of `round_` (its examples join the labeled set in that round)."""
    query = trainer.progress["queries"][str(round_)]
    indices = np.asarray(query["pool_indices"], dtype=np.int64)
    if trainer.args.annotation == "human":
        store = trainer.examples.label_store(trainer.run_dir.path)
        if not query_is_complete(trainer.run_dir.path, round_, indices, store):
            _write_query(trainer, round_, indices, query)
            return None
        labeled, labels = trainer.examples.stored_labels(store, indices)
    else:
        # Simulation goes through the same store as people's labels: the oracle is one more source. A task whose
        # annotations are the pool's own rows (boxes) has none to store: they are revealed as they are.
        batch = trainer.examples.oracle_labels(indices)
        labels = None
        if batch is not None:
            labels = _store_labels(trainer, batch, round_, expected=indices).as_array(len(trainer.pool))[
                indices
            ]
        labeled = np.ones(len(indices), dtype=bool) if labels is None else labels >= 0
    scores = None if query["scores"] is None else np.asarray(query["scores"])[labeled]
    trainer.pool.label(indices[labeled], round=round_, scores=scores, strategy=query["strategy"],
                       labels=None if labels is None else labels[labeled])  # fmt: skip
    histogram = trainer.examples.class_counts(indices[labeled], None if labels is None else labels[labeled])
    trainer.progress["queries"][str(round_)]["class_counts"] = dict(sorted(histogram.items()))
    classes = ", ".join(f"{name} {count}" for name, count in histogram.most_common())
    return {
        "round": round_,
        "labeled": trainer.pool.num_labeled,
        "unlabeled_in_query": int((~labeled).sum()) or None,
        "classes": classes,
    }


def _set_query(trainer, round_: int, indices: np.ndarray, scores, strategy: str) -> None:
    record = {
        "pool_indices": np.asarray(indices).tolist(),
        "scores": None if scores is None else np.asarray(scores).tolist(),
        "strategy": strategy,
    }
    if trainer.args.annotation == "human":
        # What each queried image is, so that its labels land on it even if the pool changes meanwhile (checked
        # when they are ingested and when the run resumes). Reads the queried rows only.
        record[QUERY_IMAGES] = query_images(trainer.pool.dataset, trainer.args.image_column, indices)
    trainer.progress.setdefault("queries", {})[str(round_)] = record


def _store_labels(trainer, batch: LabelBatch, round_: int, expected=None) -> LabelStore:
    # Only the main process opens the store before the barrier: the others read it once it is written.
    if trainer.is_world_process_zero():
        LabelStore(trainer.run_dir.path, trainer.class_names).add(batch, round=round_, expected=expected)
    trainer.accelerator.wait_for_everyone()
    return LabelStore(trainer.run_dir.path, trainer.class_names)


def _write_query(trainer, round_: int, indices: np.ndarray, query: dict) -> None:
    directory = query_directory(trainer.run_dir.path, round_)
    if trainer.is_world_process_zero() and not directory.is_dir():
        trainer.examples.write_query(directory, indices, query, image_column=trainer.args.image_column, round=round_,
                                     model_version=surrogate_model_version(trainer.run_dir.path, round_ - 1))  # fmt: skip
        if trainer.args.hub_query_id:
            push_query_batch(
                directory,
                trainer.args.hub_query_id,
                round_,
                token=trainer.args.hub_token,
                private=trainer.args.hub_private_repo,
            )
    trainer.accelerator.wait_for_everyone()
    logger.info(
        f"{len(indices):,} images to label for round {round_}: {directory} ({query_contents(directory)}). Bring the "
        f"labels with `prunefuse-hf label {trainer.run_dir.path} --labels {trainer.task.labels_metavar}` (or, with a Label Studio server, "
        f"`prunefuse-hf label-studio push {trainer.run_dir.path}`, then `... pull`), then resume: {trainer.resume_command or 'trainer.train(resume_from_checkpoint=True)'}"
    )


def report(trainer) -> dict:
    if trainer.is_world_process_zero():
        write_report(trainer.run_dir, trainer.progress, trainer.args, trainer.class_names)
        trainer.save_model_card(trainer.run_dir.fused_dir)
        if trainer.args.push_to_hub:
            # A failed push raises before this step is marked done, so a resume (or `prunefuse-hf push`)
            # retries it.
            trainer.push_to_hub()
    metric = trainer.examples.metric
    return {"labeled": trainer.pool.num_labeled, metric: trainer.progress.get("final", {}).get(metric)}


def _round(trainer, round_: int) -> dict:
    return trainer.progress["rounds"].setdefault(str(round_), {"round": round_})
