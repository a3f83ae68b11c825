"""Attach a Recorder to training loops you do not write yourself: PyTorch Lightning
(:mod:`~dynalens.probe.integrations.lightning`) and the Hugging Face Trainer
(:mod:`~dynalens.probe.integrations.hf`). Each module imports its framework."""
