"""A deterministic discrete-event fleet simulator on the production decision code."""
