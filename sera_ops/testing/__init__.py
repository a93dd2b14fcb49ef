"""Honest doubles for what cannot run here: a scripted teacher LLM (OpenAI HTTP protocol), bundled sample repositories.

Users can run them too, for dry runs of their own configuration.
"""
