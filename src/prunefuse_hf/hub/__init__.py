"""Publishing a run: model, surrogate and dataset cards, the selected subset, and the push to the Hub.

It reads a run directory's files and never the trainer, so `PruneFuseTrainer.save_model` and `push_to_hub` can use it."""
