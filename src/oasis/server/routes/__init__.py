"""Thin routes: parse, call serving, return."""
