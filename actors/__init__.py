"""Rollout side of Stride: the environments, the policy network and the rollout loop."""
