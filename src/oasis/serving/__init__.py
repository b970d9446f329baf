"""Request -> engine work -> OpenAI response objects; shared by HTTP and in-process use."""
