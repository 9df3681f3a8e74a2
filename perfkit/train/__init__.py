"""Training: config -> FSDP2 model, AdamW, schedule, loader -> the step loop (see train_cmd.py for the order)."""
