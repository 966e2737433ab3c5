"""Meta-learning of field initializations (MCL-NF and its baselines) and its data."""
