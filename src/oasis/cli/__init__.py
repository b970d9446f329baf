"""The oasis command line (typer). Only this package prints."""
