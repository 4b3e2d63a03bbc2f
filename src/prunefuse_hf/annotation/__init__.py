"""Labels in and out: query batches for annotators, label files and annotation-tool exports read back, the
run's label store, and the simulated oracle."""
