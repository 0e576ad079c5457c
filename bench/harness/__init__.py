"""What several benchmarks in bench/ share: imported by the scripts, which run from bench/."""
