"""Tests every family gets by being declared: its checkpoints, exported components, routes and request fields,
driven by the registry (as diffusers' PipelineTesterMixin gives a new pipeline its tests)."""
