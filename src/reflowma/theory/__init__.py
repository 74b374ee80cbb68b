"""Closed-form theory checks (Gaussian counterexamples) for reflow with marginal alignment."""
