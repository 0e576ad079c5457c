"""Apps served or built by the benchmarks in bench/."""
