"""stepflash: serve StepFun's Step 3.7 Flash the way the StepFun Open Platform does."""

__version__ = "0.1.0"
