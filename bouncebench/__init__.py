"""BounceBench, the synthetic sync benchmark: clips with known events, quality proxies, the evaluation."""
