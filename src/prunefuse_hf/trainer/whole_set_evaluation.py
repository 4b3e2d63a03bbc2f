"""Evaluation under several processes for tasks whose labels differ in size from image to image (object detection).

`Trainer.evaluate` shards the evaluation set over the processes and gathers predictions and labels with
`accelerate`, which concatenates each tensor across processes. Per-image label dicts (a detector's boxes and class
ids, as transformers' image processors give them) come back merged: the boxes of one image of each process in one
dict, so the metric cannot pair them with their images (transformers #33525; its object-detection example has the
same limit). [`WholeSetEvaluation`] makes every process evaluate the whole set itself, without sharding or gathering,
so each computes the same, exact metric; training stays sharded.
"""

from __future__ import annotations

from torch.utils.data import DataLoader


class WholeSetEvaluation:
    """
    A `Trainer` mixin: with more than one process and `evaluates_whole_set` true, the evaluation and test
    `DataLoader`s are not sharded and nothing is gathered, so that every process evaluates every example.

    Cost: each process runs the whole evaluation (the time one process would take), instead of its share.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> class DetectionTrainer(WholeSetEvaluation, Trainer):
    ...     evaluates_whole_set = True
    ```
    """

    evaluates_whole_set = True

    def get_eval_dataloader(self, eval_dataset=None):
        if not self._evaluates_whole_set():
            return super().get_eval_dataloader(eval_dataset)
        if eval_dataset is None or isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset if eval_dataset is None else self.eval_dataset[eval_dataset]
        return self._whole_set_loader(eval_dataset, self.args.eval_batch_size)

    def get_test_dataloader(self, test_dataset):
        if not self._evaluates_whole_set():
            return super().get_test_dataloader(test_dataset)
        return self._whole_set_loader(test_dataset, self.args.eval_batch_size)

    def _evaluates_whole_set(self) -> bool:
        return self.evaluates_whole_set and self.accelerator.num_processes > 1

    def _whole_set_loader(self, dataset, batch_size: int) -> DataLoader:
        # The evaluation loop gathers with `gather_function`, and sets it back to `gather_for_metrics` when it ends.
        self.gather_function = _as_is
        return DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator,
                          num_workers=self.args.dataloader_num_workers,
                          pin_memory=self.args.dataloader_pin_memory)  # fmt: skip


def _as_is(values):
    return values
