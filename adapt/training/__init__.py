"""Supervised training and evaluation, and the training toolkit the adaptation stages share."""
