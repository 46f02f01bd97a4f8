"""OpenELM-aware LoRA and DoRA on top of peft."""
