"""Scenario texts shared by the scenario and CLI tests."""

TINY = """\
name = "tiny"
description = "two classes, a 1-worker and a 2-worker topology, three loads, two policies"

[[workload.classes]]
name = "short"
tokens = 128
shareable = 0.5
mix = 0.7

[[workload.classes]]
name = "long"
tokens = 1024
shareable = 0.2
mix = 0.3

[worker]
a = 8.0
d = 40.0
kappa = 8000.0
rho_max = 0.95
residency = 1.0
cache_size = 2.0
prefill = { a = 18.10, b = 0.1019, c = 7.12e-6 }

[[topologies]]
name = "1D"
workers = 1

[[topologies]]
name = "2D"
workers = 2
worker = { kappa = [9000.0, 7000.0] }

[load]
values = [0.3, 0.7, 1.0]

[[policies]]
name = "selfish"

[[policies]]
name = "load_balanced"
label = "balanced"

[solver]
starts = 2
dtype = "float32"
"""
