"""Domain data: sources, tokenisation, TFDS preparation, packing and the mixture sampler."""
