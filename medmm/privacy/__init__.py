"""Privacy: differentially private training (opacus) and membership-inference audits."""
