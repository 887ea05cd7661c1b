"""Methods decide which parameters train (full, freeze, LoRA through PEFT); see issue 3.

Not built yet: this package marks its place in the pipeline."""
