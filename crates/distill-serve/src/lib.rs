//! The serve stage: students behind an OpenAI-compatible HTTP API with a cascade to the premium model.
