"""Training: SFT (teachers, student baselines, SeqKD) and KD (token-level divergences, on-policy GKD)."""
