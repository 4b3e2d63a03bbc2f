"""`PruneFuseTrainer` (the method, one resumable step at a time) with `PruneFuseConfig`, the
`DistillationTrainer` used for the inner trainings, BatchNorm over processes and the run's report."""
