"""Prompt templates: the prompt of one image is the template with ``{label}`` replaced by its class name (pure
Python, so the feature reader can rebuild prompts without importing torch)."""
from __future__ import annotations


def format_prompt(template: str, label_name: str) -> str:
    """The prompt of one image: ``template`` with every ``{label}`` replaced by its class name."""
    return template.replace("{label}", str(label_name))
