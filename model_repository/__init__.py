"""Triton models of the stack: python-backend pipelines and the component models they call, and the code that
lays them out as a Triton model repository (config.pbtxt generated from the registry)."""
