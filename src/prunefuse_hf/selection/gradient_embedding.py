"""BADGE's gradient embedding (Ash et al., "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds",
ICLR 2020) for models whose example holds many predictions: a segmenter's pixels, a detector's queries.

BADGE embeds an example as the gradient of its loss with the model's own prediction as the label ("hallucinated"
labels) with respect to the last layer's weights. For a classifier that is one outer product `(p − onehot(ŷ)) ⊗ h`
(`BadgeStrategy` never builds it). When the last layer is applied at `P` positions of one example (a 1×1 convolution
over a feature map, a linear layer over decoder queries) with weights `W` (`C × D`), the loss of the example is the
mean over its counted positions of the cross-entropy, and its gradient is

    ∂/∂W (1/P) Σ_p CE(W h_p + b, ŷ_p) = (1/P) Σ_p (softmax(W h_p + b) − onehot(ŷ_p)) ⊗ h_p,   ŷ_p = argmax_c logits_p

a `C × D` matrix per example (`C·D` numbers, flattened row-major as `W` is), computed here from the layer's input and
output of the scoring pass, in closed form, with no autograd and without keeping any per-position map of the pool: a
batch's maps are reduced to `B × C × D` before the next batch runs. With one sigmoid per class (detectors trained with
a focal loss: Conditional and Deformable DETR, RT-DETR) the loss is the per-class binary cross-entropy and the residual
`sigmoid(l) − onehot(ŷ)`.

The layer is found from what the model computes, not from an attribute name: among its linear layers and 1×1
convolutions with `num_labels` or `num_labels + 1` outputs (a "no object" class), the call whose output is the
model's `logits` (the same tensor, or upsampled to it, as UperNet and DPT upsample their logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["HeadCalls", "last_layer_gradients"]


def last_layer_gradients(
    features: torch.Tensor,
    logits: torch.Tensor,
    *,
    keep: torch.Tensor | None = None,
    activation: str = "softmax",
) -> torch.Tensor:
    """
    Per example, the gradient of the mean loss of its counted positions, with hallucinated labels (each position's
    argmax), with respect to the weights of the layer that turns `features` into `logits`.

    Args:
        features (`torch.Tensor` of shape `(B, P, D)`): The layer's input at each of the `P` positions (pixels,
            queries) of each example.
        logits (`torch.Tensor` of shape `(B, P, C)`): The layer's output at the same positions.
        keep (`torch.Tensor` of shape `(B, P)` bool, *optional*): The positions counted (default: all). Left-out
            positions (padding, the ignore index) add nothing, and the mean is over the counted ones; an example
            without any counted position embeds as zeros.
        activation (`str`, *optional*, defaults to `"softmax"`): `"softmax"` (cross-entropy over the `C` outputs) or
            `"sigmoid"` (binary cross-entropy per output).

    Returns:
        `torch.Tensor` of shape `(B, C·D)`, float32: `(1/P_b) Σ_p (act(l_p) − onehot(argmax l_p)) ⊗ h_p`, flattened
        as the layer's weight `[C, D]` is.

    Raises:
        `ValueError`: shapes that do not pair, or an unknown activation.

    Example:

    ```python
    >>> features = torch.tensor([[[1.0, 2.0]]])  # one example, one position, D = 2
    >>> logits = torch.tensor([[[0.0, 0.0]]])  # C = 2, a tie: argmax is class 0
    >>> last_layer_gradients(features, logits).tolist()  # (0.5 − 1, 0.5) ⊗ (1, 2)
    [[-0.5, -1.0, 0.5, 1.0]]
    ```
    """
    if features.ndim != 3 or logits.ndim != 3 or features.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"features (B, P, D) and logits (B, P, C) must share B and P, got {tuple(features.shape)} and "
            f"{tuple(logits.shape)}."
        )
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
    logits, features = logits.detach().float(), features.detach().float()
    residual = logits.softmax(-1) if activation == "softmax" else logits.sigmoid()
    residual.scatter_add_(-1, logits.argmax(-1, keepdim=True), torch.full_like(residual[..., :1], -1.0))
    weights = torch.ones(logits.shape[:2]) if keep is None else torch.as_tensor(keep).float()
    weights = weights.to(logits.device)
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1.0)
    gradients = torch.einsum("bpc,bpd->bcd", residual * weights[..., None], features)
    return gradients.reshape(len(gradients), -1)


class HeadCalls:
    """
    Records, during a forward pass, the input and output of every call of a model's candidate last layers (linear
    layers and stride-1 1×1 convolutions with `num_labels` or `num_labels + 1` outputs), so that the one whose output
    became the logits can be read ([`HeadCalls.producing`]). Use it as a context manager around the forward passes.

    Args:
        model (`torch.nn.Module`): A model with `config.num_labels`.

    Raises:
        `ValueError`: the model has no such layer, naming the class.

    Example:

    ```python
    >>> model = torch.nn.Conv2d(4, 3, 1)
    >>> model.config = type("Config", (), {"num_labels": 3})()
    >>> with HeadCalls(model) as calls:
    ...     logits = model(torch.ones(1, 4, 2, 2))
    ...     features, head_logits = calls.producing(logits)
    >>> tuple(features.shape), head_logits is logits
    ((1, 4, 2, 2), True)
    ```
    """

    def __init__(self, model: torch.nn.Module):
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        widths = {num_labels, (num_labels or 0) + 1}
        self.model_name = type(model).__name__
        self.layers = [module for module in model.modules() if _is_last_layer_candidate(module, widths)]
        if not self.layers:
            raise ValueError(
                f"{self.model_name} has no linear layer or 1×1 convolution giving its {num_labels} class logits, so "
                "BADGE's last-layer gradient embedding cannot be computed for it: choose another strategy "
                "(least_confidence, entropy, margin, kcenter_greedy or random)."
            )
        self.calls: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []
        self._hooks = []

    def __enter__(self) -> HeadCalls:
        self._hooks = [layer.register_forward_hook(self._record) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self.calls = [], []

    def _record(self, module, args, output) -> None:
        self.calls.append((module, args[0], output))

    def clear(self) -> None:
        """Forget the calls of the previous forward pass."""
        self.calls.clear()

    def producing(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        `(input, output)` of the last-layer call whose output is `logits` (see [`HeadCalls.producing_call`]).

        Raises:
            `ValueError`: no recorded call gave the logits, naming the model.
        """
        return self.producing_call(logits)[1:]

    def producing_call(self, logits: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
        """
        `(layer, input, output)` of the last-layer call whose output is `logits`: the same tensor, else a call whose
        output equals them (detectors that stack every decoder layer's logits and return the last, such as Deformable
        DETR and RT-DETR), else the call whose feature map, upsampled bilinearly to the logits' size (as UperNet, `align_corners=False`, or DPT,
        `align_corners=True`, do), equals them.

        Raises:
            `ValueError`: no recorded call gave the logits, naming the model.
        """
        for call in reversed(self.calls):
            if call[2] is logits:
                return call
        for call in reversed(self.calls):
            if call[2].shape == logits.shape and torch.equal(call[2], logits):
                return call
        for call in reversed(self.calls):
            output = call[2]
            if output.ndim == 4 and logits.ndim == 4 and output.shape[:2] == logits.shape[:2]:
                for corners in (False, True):
                    resized = F.interpolate(
                        output, size=logits.shape[-2:], mode="bilinear", align_corners=corners
                    )
                    if torch.allclose(resized, logits, rtol=1e-4, atol=1e-5):
                        return call
        raise ValueError(
            f"None of {self.model_name}'s linear layers or 1×1 convolutions with one output per class gave its "
            "logits in this forward pass, so BADGE's last-layer gradient embedding cannot be computed for it: choose "
            "another strategy (least_confidence, entropy, margin, kcenter_greedy or random)."
        )


def _is_last_layer_candidate(module: torch.nn.Module, widths: set) -> bool:
    if isinstance(module, torch.nn.Linear):
        return module.out_features in widths
    if isinstance(module, torch.nn.Conv2d):
        return (
            module.out_channels in widths
            and tuple(module.kernel_size) == (1, 1)
            and tuple(module.stride) == (1, 1)
            and module.padding in ((0, 0), "valid")
            and module.groups == 1
        )
    return False
