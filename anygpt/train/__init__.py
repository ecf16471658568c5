"""Training: the shared loop (loop.py), the toy world's tiny parts, and NExT-GPT's three stages."""
