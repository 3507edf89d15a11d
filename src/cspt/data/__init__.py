"""Reading imagery and the datasets built on it."""
