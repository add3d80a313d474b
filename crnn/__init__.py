"""crnn: recurrent layers on still images (Lvov, Smadar, Bezen, arXiv 2409.06235)."""

__version__ = "0.1.0"
