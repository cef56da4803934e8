"""hwsearch: hardware- and robustness-aware mixed-precision search."""
