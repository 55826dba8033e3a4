"""Performance comparisons that print ratios measured side by side."""
