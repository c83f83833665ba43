"""What every layer above may use to run: processes (distributed), the device and autocast,
progress bars, atomic writes and run-folder locks. It imports nothing of the core but config and
errors."""
