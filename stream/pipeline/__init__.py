"""Starting, wiring and supervising a run's workers; the run report."""
