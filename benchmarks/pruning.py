"""Benchmark: dense vs PruneFuse surrogate for a realistic config of every supported family.

For each family (built from config, random init, 224 x 224 inputs, 1000 classes) and one pruning
ratio: parameters and MACs of the dense model and the surrogate, forward+backward(+SGD step) time of
each at one batch size (measured in the same process, one after the other, so their ratio is
comparable), wall time of `prune_model` and of `fuse_into_dense`, and peak memory.

Each family runs in its own subprocess, so the peak resident memory (`ru_maxrss` of that process)
is the family's own: "prune peak" is read right after pruning and fusion, "total peak" after the
timing runs too. On CUDA the peak allocated GPU memory is reported as well.

Usage:
    python benchmarks/pruning.py                      # all families, writes benchmarks/results/pruning.json
    python benchmarks/pruning.py --families vit swin --batch_size 8 --iterations 2
    python benchmarks/pruning.py --general --output benchmarks/results/pruning_general.json   # general-path rows
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "pruning.json"

# Realistic configs (ImageNet sizes) as keyword arguments of each family's config class.
FAMILIES = {
    "resnet": ("ResNet-50", dict(layer_type="bottleneck", embedding_size=64,
                                 hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3])),
    "convnext": ("ConvNeXt-T", dict(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3])),
    "vit": ("ViT-S/16", dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12,
                             num_attention_heads=6, intermediate_size=1536)),
    "swin": ("Swin-T", dict(image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                            window_size=7)),
    "mobilenet_v2": ("MobileNetV2 1.0", dict(image_size=224, depth_multiplier=1.0)),
    "regnet": ("RegNetY-400MF", dict(embedding_size=32, hidden_sizes=[48, 104, 208, 440],
                                     depths=[1, 3, 6, 6], groups_width=8, layer_type="y")),
    "efficientnet": ("EfficientNet-B0", dict(image_size=224, width_coefficient=1.0, depth_coefficient=1.0,
                                             hidden_dim=1280)),
    # Not in the default run (same kernels as their siblings above); pass --families to include them.
    "convnextv2": ("ConvNeXt V2-T", dict(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3])),
    "deit": ("DeiT-S", dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12,
                            num_attention_heads=6, intermediate_size=1536)),
}  # fmt: skip
# Families of the general path (no narrowed config: the surrogate is rebuilt from the dense config and the plan's
# pruning history). ViT-S-sized towers for CLIP and SigLIP (their image classifiers use only the vision tower).
_VIT_S = dict(
    image_size=224,
    patch_size=16,
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
)
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
GENERAL_FAMILIES = {
    "dinov2": ("DINOv2-S/14", dict(image_size=224, patch_size=14, hidden_size=384, num_hidden_layers=12,
                                   num_attention_heads=6, mlp_ratio=4)),
    "dinov2_with_registers": ("DINOv2-S/14 + 4 registers", dict(
        image_size=224, patch_size=14, hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
        num_register_tokens=4)),
    "siglip": ("SigLIP ViT-S/16 tower", dict(vision_config=_VIT_S, text_config=_TEXT)),
    "clip": ("CLIP ViT-S/16 tower", dict(vision_config=_VIT_S, text_config=_TEXT)),
    "beit": ("BEiT-S/16", dict(_VIT_S, use_relative_position_bias=True, layer_scale_init_value=0.1,
                              use_mean_pooling=True)),
    "data2vec-vision": ("Data2Vec-Vision-S/16", dict(_VIT_S, use_relative_position_bias=True,
                                                     layer_scale_init_value=0.1, use_mean_pooling=True)),
    "swinv2": ("Swin V2-T", dict(image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                 window_size=7)),
    "mobilenet_v1": ("MobileNetV1 1.0", dict(image_size=224, depth_multiplier=1.0)),
    "mobilevit": ("MobileViT-S", dict(image_size=224)),
    "poolformer": ("PoolFormer-S12", dict()),
    "mobilevitv2": ("MobileViT V2 1.0", dict(image_size=224)),
    "levit": ("LeViT-128S", dict(image_size=224)),
}  # fmt: skip
FAMILIES.update(GENERAL_FAMILIES)
DEFAULT_FAMILIES = ["resnet", "convnext", "vit", "swin", "mobilenet_v2", "regnet", "efficientnet"]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _train_step_seconds(model, pixel_values, labels, iterations: int, warmup: int, device) -> float:
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()

    def step():
        loss = F.cross_entropy(model(pixel_values).logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations


def run_family(model_type: str, args) -> dict:
    """One family, in the current process (the parent runs this in a fresh subprocess)."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    from prunefuse_hf import fuse_into_dense, prune_model
    from prunefuse_hf.pruning.cost import model_cost

    torch.manual_seed(0)
    device = torch.device(args.device)
    name, kwargs = FAMILIES[model_type]
    config = AutoConfig.for_model(model_type, num_labels=1000, **kwargs)
    class_name = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    class_name = class_name[0] if isinstance(class_name, tuple) else class_name
    dense = getattr(transformers, class_name)(config).to(device)

    start = time.perf_counter()
    surrogate, plan = prune_model(dense, args.pruning_ratio)
    prune_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fuse_into_dense(dense, surrogate, plan)
    fuse_seconds = time.perf_counter() - start
    prune_peak = _peak_rss_mib()

    dense_cost, surrogate_cost = model_cost(dense, args.image_size), model_cost(surrogate, args.image_size)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 1000, (args.batch_size,), generator=generator)
    pixel_values, labels = pixel_values.to(device), labels.to(device)
    dense_step = _train_step_seconds(dense, pixel_values, labels, args.iterations, args.warmup, device)
    surrogate_step = _train_step_seconds(
        surrogate, pixel_values, labels, args.iterations, args.warmup, device
    )
    result = {
        "family": model_type,
        "model": name,
        "pruning_ratio": args.pruning_ratio,
        "dense_params": dense_cost.params,
        "surrogate_params": surrogate_cost.params,
        "params_ratio": surrogate_cost.params / dense_cost.params,
        "dense_macs": dense_cost.macs,
        "surrogate_macs": surrogate_cost.macs,
        "macs_ratio": surrogate_cost.macs / dense_cost.macs,
        "dense_step_seconds": dense_step,
        "surrogate_step_seconds": surrogate_step,
        "step_time_ratio": surrogate_step / dense_step,
        "prune_seconds": prune_seconds,
        "fuse_seconds": fuse_seconds,
        "prune_peak_rss_mib": prune_peak,
        "total_peak_rss_mib": _peak_rss_mib(),
        "pruning_path": plan.pruning_path,
        "attention_outputs_dense": plan.attention_outputs_dense,
        # A general-path surrogate keeps the dense config: its widths are in the plan, not the config.
        "surrogate_config_widths": {
            key: surrogate.config.to_dict()[key]
            for key in ("hidden_sizes", "embedding_size", "hidden_size", "intermediate_size", "embed_dim",
                        "depth_multiplier", "width_coefficient", "groups_width", "hidden_dim")
            if key in surrogate.config.to_dict() and plan.pruning_path == "config"
        },
    }  # fmt: skip
    if device.type == "cuda":
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def markdown_table(results: list[dict], args_summary: str) -> str:
    lines = [
        f"PruneFuse surrogate vs dense, {args_summary}.",
        "",
        "| model | params dense → surrogate (ratio) | MACs dense → surrogate (ratio) | train step dense / surrogate (ratio) | prune / fuse time | peak RSS prune / total |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['dense_params'] / 1e6:.1f}M → {r['surrogate_params'] / 1e6:.1f}M "
            f"({r['params_ratio']:.2f}) | {r['dense_macs'] / 1e9:.2f}G → {r['surrogate_macs'] / 1e9:.2f}G "
            f"({r['macs_ratio']:.2f}) | {r['dense_step_seconds'] * 1e3:.0f} / {r['surrogate_step_seconds'] * 1e3:.0f} ms "
            f"({r['step_time_ratio']:.2f}) | {r['prune_seconds']:.1f} s / {r['fuse_seconds']:.2f} s "
            f"| {r['prune_peak_rss_mib']:.0f} / {r['total_peak_rss_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=None, choices=sorted(FAMILIES))
    parser.add_argument(
        "--general", action="store_true", help="the general-path families (default: named adapters)"
    )
    parser.add_argument("--pruning_ratio", type=float, default=0.5)
    parser.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="32 is the reference; 8 keeps the run near 6 minutes on 2 cores",
    )
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=2, help="timed train steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed train steps per model first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one family, print JSON
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_family(args.worker, args)))
        return

    import torch

    if args.families is None:
        args.families = list(GENERAL_FAMILIES) if args.general else DEFAULT_FAMILIES
    results = []
    for model_type in args.families:
        command = [sys.executable, __file__, "--worker", model_type]
        for key in ("pruning_ratio", "batch_size", "image_size", "iterations", "warmup", "device"):
            command += [f"--{key}", str(getattr(args, key))]
        start = time.perf_counter()
        completed = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
        )
        if completed.returncode != 0:
            raise SystemExit(f"{model_type} failed:\n{completed.stderr[-3000:]}")
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        result["wall_seconds"] = time.perf_counter() - start
        results.append(result)
        print(
            f"{result['model']}: MACs ratio {result['macs_ratio']:.2f}, step time ratio "
            f"{result['step_time_ratio']:.2f} ({result['wall_seconds']:.0f} s)",
            file=sys.stderr,
        )

    summary = (
        f"p = {args.pruning_ratio}, {args.image_size}×{args.image_size} inputs, 1000 classes, batch "
        f"{args.batch_size}, {args.warmup} warm-up + {args.iterations} timed forward+backward+SGD steps "
        f"per model, device {args.device} ({torch.get_num_threads()} threads)"
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "settings": {
                    key: value for key, value in vars(args).items() if key not in ("worker", "output")
                },
                "torch_threads": torch.get_num_threads(),
                "memory": "peak resident set size (ru_maxrss) of the per-family subprocess",
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(markdown_table(results, summary))


if __name__ == "__main__":
    main()
