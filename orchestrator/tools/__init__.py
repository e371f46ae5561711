"""Tools that are not training (benchmarks, the GPU check): nothing in training imports them."""
