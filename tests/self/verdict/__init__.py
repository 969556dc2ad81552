"""The verdict: what PASS and FAIL mean. Tolerances, degenerate and non-finite values, the gate's and the goldens'
sensitivity to planted changes, the identity goldens carry, the user's own goldens, M0's target check, and the
stage registry every verdict table is derived from."""
