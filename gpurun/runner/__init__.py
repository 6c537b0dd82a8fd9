"""The LoRA trainer that runs on the rented GPU (imports torch/diffusers/peft); never imported by the CLI."""
