"""Helpers every layer uses: atomic writes and the run directory's files, Hub ids, the allocator setting."""
