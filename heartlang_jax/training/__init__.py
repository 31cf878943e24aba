"""The training machinery every stage shares: loop, optimizer, checkpoints, logs, devices."""
