"""Structured pruning of a Llama decoder: whole blocks, MLP neurons, KV groups, output-vocabulary rows.

Each module computes a choice from measured importance and applies it to a Meta-named state dict and
its Architecture; nothing here reads files or knows about the CLI. distill.py recovers quality with a
short logit distillation from the unpruned model.
"""
