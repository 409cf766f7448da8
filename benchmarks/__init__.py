"""The benchmarks: each prints measured figures with the machine and its load; run one as
`python -m benchmarks.NAME --help` from the repository root (they import the installed promptkd)."""
