"""Plots and the paper-figure generator."""
