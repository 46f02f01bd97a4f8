"""Commonsense-reasoning evaluation: Apple's, LLM-Adapters' and lm-eval's protocols with one fast scorer."""
