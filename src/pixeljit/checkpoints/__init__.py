"""Weights on disk: the authors' `.pth` (`authors`), portable `.safetensors` (`safetensors_io`),
our run checkpoints (`run`), the checked state-dict loading they share (`weights`), and one
loader for every kind that returns a network with its objective (`load`)."""
