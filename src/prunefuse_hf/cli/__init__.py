"""The `prunefuse-hf` command: recipes parsed into the trainer's arguments, and the subcommands."""
