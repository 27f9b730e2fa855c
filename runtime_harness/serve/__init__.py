"""`llama-mobile serve`: a bundle behind an OpenAI- and Llama Stack-compatible HTTP API."""
