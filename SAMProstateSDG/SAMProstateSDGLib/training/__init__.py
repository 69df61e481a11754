"""Training machinery shared by the methods: the loop, the coarse network, the embedding cache, augmentation."""
