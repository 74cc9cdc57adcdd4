"""The models DQAR runs on and how they are sampled: the model zoo, the sampling loop, CIFAR-10, DiT training."""
