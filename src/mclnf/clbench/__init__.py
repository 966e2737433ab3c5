"""Online continual classification: the benchmarks of La-MAML and EMCL (permuted MNIST, split CIFAR-100, split miniImageNet), their learners and metrics."""
