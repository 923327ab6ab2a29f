"""Baselines against the Sigma-Branch tree: static structured pruning (L1, FPGM, HRank), the AGF
utility (pruning criterion and tree channel score), confidence-routed experts, and the
``sigmabranch compare`` table."""
