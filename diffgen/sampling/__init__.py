"""The sampling pipeline: settings (one definition of every default), prompt files, per-image
seeds and batches, images and their PNG recipes."""
