"""Open-loop evaluation: a policy's actions on recorded episodes against what was recorded, beside two baselines."""
