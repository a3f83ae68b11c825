"""Training-dynamics instruments: gradient noise scale, critical batch size, and more."""
