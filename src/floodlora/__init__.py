"""floodlora: rapid LoRA adaptation of Clay foundation models to Sentinel-1 flood segmentation.

Importing the package is cheap on purpose: heavy dependencies (torch, lightning, peft) are imported
inside the modules and CLI commands that need them.
"""

__version__ = "0.1.0"
