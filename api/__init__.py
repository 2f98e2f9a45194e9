"""The FastAPI adapter: the product's REST contract (shared/api.md) in front of Triton."""
