"""Training: config -> FSDP2 model, AdamW, schedule, loader -> the step loop (see main.py for the order)."""
