"""The Ray Serve embedding endpoint (OpenAI-compatible /v1/embeddings)."""
