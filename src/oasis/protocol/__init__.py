"""The OpenAI wire format: our request models, OpenAI's response types. Imports nothing of oasis."""
