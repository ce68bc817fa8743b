"""``make gpu-check``: every algorithm on a CUDA GPU, with sync debugging on.

Modules: ``cli`` (the three parts and the command line), ``syncs`` (counting synchronizations
per call), ``train`` (DomainBed's train script with each update's syncs counted), ``report``
(``results/benchmarks/cuda.{json,md}``).
"""
