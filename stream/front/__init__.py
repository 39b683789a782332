"""What a user runs: the command line and the demo."""
