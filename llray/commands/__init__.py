"""One module per ``llray`` subcommand; each checks all input before starting work."""
