"""Who is calling, may they, and what did it cost: policy only, no FastAPI here."""
